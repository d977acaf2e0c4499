"""Download machinery against a local http.server in a thread (offline, deterministic)."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pyarrow.parquet as pq
import pytest

from rap.config import DataConfig, DatasetFetchConfig, FetchConfig
from rap.data import download as dl
from rap.data.download import DownloadError, download, fetch
from rap.data.manifest import read_manifest
from rap.data.records import DataError

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` with Range support; ``faults`` injects failures per path:
    a list of "503" (error status) or "cut" (send half the body, then close)."""

    files: dict[str, bytes] = {}
    faults: dict[str, list[str]] = {}
    log: list[tuple[str, str | None]] = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).log.append((self.path, rng))
        if self.path not in self.files:
            self.send_error(404)
            return
        fault = self.faults.get(self.path, [])
        if fault and fault[0] == "503":
            fault.pop(0)
            self.send_error(503)
            return
        body, start = self.files[self.path], 0
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if fault and fault[0] == "cut":
            fault.pop(0)
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)


@pytest.fixture()
def server():
    Handler.files, Handler.faults, Handler.log = {}, {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_verifies_and_skips_complete_files(server, tmp_path):
    Handler.files["/a.bin"] = PAYLOAD
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    dest = tmp_path / "a.bin"
    assert fetch(f"{server}/a.bin", dest, sha256=sha, size=len(PAYLOAD), backoff=0) == "downloaded"
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "a.bin.part").exists()
    n = len(Handler.log)
    assert fetch(f"{server}/a.bin", dest, sha256=sha, backoff=0) == "skipped"
    assert len(Handler.log) == n  # no request for a complete file


def test_fetch_resumes_a_cut_transfer_with_range(server, tmp_path):
    Handler.files["/b.bin"] = PAYLOAD
    Handler.faults["/b.bin"] = ["cut"]
    dest = tmp_path / "b.bin"
    assert fetch(f"{server}/b.bin", dest, size=len(PAYLOAD), backoff=0) == "downloaded"
    assert dest.read_bytes() == PAYLOAD
    ranges = [r for p, r in Handler.log if p == "/b.bin"]
    assert ranges[0] is None and ranges[1] == f"bytes={len(PAYLOAD) // 2}-"


def test_fetch_resumes_a_part_file_left_by_an_earlier_run(server, tmp_path):
    Handler.files["/c.bin"] = PAYLOAD
    (tmp_path / "c.bin.part").write_bytes(PAYLOAD[:1000])
    fetch(f"{server}/c.bin", tmp_path / "c.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), backoff=0)
    assert (tmp_path / "c.bin").read_bytes() == PAYLOAD
    assert Handler.log == [("/c.bin", "bytes=1000-")]


def test_fetch_retries_transient_errors_with_backoff(server, tmp_path, monkeypatch):
    sleeps = []
    monkeypatch.setattr(dl.time, "sleep", sleeps.append)
    Handler.files["/d.bin"] = PAYLOAD
    Handler.faults["/d.bin"] = ["503", "503"]
    assert fetch(f"{server}/d.bin", tmp_path / "d.bin", retries=3, backoff=0.5) == "downloaded"
    assert sleeps == [0.5, 1.0]  # exponential
    Handler.faults["/e.bin"] = ["503"] * 10
    Handler.files["/e.bin"] = PAYLOAD
    with pytest.raises(DownloadError, match=r"e.bin: failed after 3 attempts \(last: HTTP 503\)"):
        fetch(f"{server}/e.bin", tmp_path / "e.bin", retries=2, backoff=0.5)
    assert not (tmp_path / "e.bin").exists()


def test_fetch_checksum_mismatch_fails_and_leaves_nothing(server, tmp_path):
    Handler.files["/f.bin"] = PAYLOAD
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch(f"{server}/f.bin", tmp_path / "f.bin", sha256="0" * 64, retries=1, backoff=0)
    assert not list(tmp_path.iterdir())
    (tmp_path / "g.bin").write_bytes(b"stale")  # a wrong file in place is fetched again
    Handler.files["/g.bin"] = PAYLOAD
    assert fetch(f"{server}/g.bin", tmp_path / "g.bin", size=len(PAYLOAD), backoff=0) == "downloaded"


def test_fetch_404_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(f"{server}/nope", tmp_path / "x", retries=5, backoff=10)
    assert len(Handler.log) == 1


def test_download_webvid_limit_records_dead_links_and_stops_below_min_success(server, tmp_path):
    """--limit cuts the CSV; a non-video and a 404 are recorded, not fatal; below
    data.webvid.min_success the stage stops naming the rate, the threshold and the status file."""
    Handler.files["/v0.mp4"] = b"not a video"
    rows = "".join(f"{i},{server}/v{i}.mp4,PT10S,p1,caption {i}\n" for i in range(5))
    Handler.files["/results.csv"] = ("videoid,contentUrl,duration,page_dir,name\n" + rows).encode()
    fetch_cfg = FetchConfig(processes=2, threads=2, shard_size=2, timeout_s=5, retries=0)  # 2 shards, 2 processes
    cfg = DataConfig(
        root=str(tmp_path), source="public", fetch=fetch_cfg, webvid=DatasetFetchConfig(0.5, f"{server}/results.csv")
    )
    raw = tmp_path / "raw" / "webvid"
    with pytest.raises(dl.BelowThreshold, match=r"0\.00% of 3 items.*min_success = 50\.00%.*status\.parquet"):
        download("webvid", cfg, limit=3)
    assert (raw / "results_2M_train.csv").read_text().count("\n") == 4  # header + 3 rows
    assert (raw / "results_2M_train.csv.full").read_text().count("\n") == 6
    status = pq.read_table(raw / "status.parquet").to_pylist()
    assert [r["status"] for r in status] == ["failed"] * 3
    assert "not a decodable video" in status[0]["error_message"] and "HTTP 404" in status[1]["error_message"]
    asked = len(Handler.log)
    with pytest.raises(dl.BelowThreshold):
        download("webvid", cfg, limit=3)
    assert len(Handler.log) == asked  # recorded failures are not fetched again...
    with pytest.raises(dl.BelowThreshold):
        download("webvid", cfg, limit=3, retry_failed=True)
    assert len(Handler.log) == asked + 3  # ...unless asked


def test_download_lsmdc_explains_where_to_get_it(tmp_path):
    with pytest.raises(DataError, match="licence-gated.*LSMDC16_annos_training.csv"):
        download("lsmdc", DataConfig(root=str(tmp_path), source="public"))


def test_download_synthetic_generates_the_dataset_and_its_manifest(tmp_path):
    s = download("lsmdc", DataConfig(root=str(tmp_path), source="synthetic", synthetic_seed=5, synthetic_scale=0.05))
    assert s["source"] == "synthetic" and s["success_rate"] == 1.0
    entries = read_manifest(tmp_path, "lsmdc")
    assert len(entries) == s["listed"] > 0 and all((tmp_path / e.path).is_file() for e in entries)
