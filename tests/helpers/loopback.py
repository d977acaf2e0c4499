"""A stand-in for the internet on 127.0.0.1 (standard library http.server): serves a
WebVid-format CSV and a CC3M-format TSV whose URLs point back at it, with real mp4 and JPEG
files from the embedded generator and the faults the real lists have (404, 500, a truncated
body, a text file named .mp4/.jpg, one answer slower than the timeout). Nothing leaves the
machine. Used by tests/test_download_loopback.py and benchmarks/bench_download.py."""

from __future__ import annotations

import http.server
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rap.data import synthetic
from rap.data.adapters import load_records

FAULTS = ("404", "500", "truncated", "text", "slow")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): expected
            pass

    def _answer(self) -> None:
        srv = self.server
        with srv.lock:
            srv.requests.append(self.path)
        if srv.latency_s:
            time.sleep(srv.latency_s)
        name = self.path.rsplit("/", 1)[-1]
        fault = srv.faults.get(name)
        if fault == "404" or (fault is None and name not in srv.files):
            self._plain(404, b"not found")
        elif fault == "500":
            self._plain(500, b"server error")
        elif fault == "slow":
            time.sleep(srv.slow_s)
            self._plain(200, srv.files.get(name, b"late"))
        elif fault == "truncated":  # announces the whole file, sends half, closes
            body = srv.files[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self._plain(200, srv.files[name])

    def _plain(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, bytes]
    faults: dict[str, str]
    requests: list[str]
    latency_s: float
    slow_s: float
    lock: threading.Lock


@dataclass
class Loopback:
    """A running server; ``url(name)``; ``requests`` lists every path asked for, in order."""

    httpd: _Server
    thread: threading.Thread
    expected_ok: dict[str, set[str]] = field(default_factory=dict)  # dataset -> keys that must arrive
    failed_urls: dict[str, set[str]] = field(default_factory=dict)  # dataset -> URLs that must fail

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    @property
    def requests(self) -> list[str]:
        with self.httpd.lock:
            return list(self.httpd.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start(files: dict[str, bytes], faults: dict[str, str], *, slow_s: float = 0.0, latency_s: float = 0.0) -> Loopback:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.faults, httpd.requests = dict(files), dict(faults), []
    httpd.latency_s, httpd.slow_s, httpd.lock = latency_s, slow_s, threading.Lock()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    return Loopback(httpd, thread)


def embedded_media(tmp: Path, scale: float = 0.05) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(caption, mp4 bytes) of WebVid clips and (caption, JPEG bytes) of CC3M images made by
    the embedded generator under ``tmp`` (0.05: 12 clips, 8 images)."""
    synthetic.generate("webvid", tmp / "raw" / "webvid", seed=0, scale=scale)
    synthetic.generate("cc3m", tmp / "raw" / "cc3m", seed=0, scale=scale)
    videos = [(r.captions[0], r.path.read_bytes()) for r in load_records("webvid", tmp, "train")]
    images = [(r.captions[0], r.path.read_bytes()) for r in load_records("cc3m", tmp, "train")]
    return videos, images


def serve_lists(tmp: Path, *, n_good_videos: int, n_good_images: int, slow_s: float) -> Loopback:
    """The server with ``webvid.csv`` and ``cc3m.tsv``: ``n_good_*`` real items, then one item
    per fault of :data:`FAULTS` (with a small shard size they fall in several shards)."""
    videos, images = embedded_media(tmp / "media")
    files: dict[str, bytes] = {}
    faults: dict[str, str] = {}
    server = start(files, faults, slow_s=slow_s)
    csv_rows, tsv_rows = [], []
    ok_v, ok_i, bad_v, bad_i = set(), set(), set(), set()
    for i in range(n_good_videos + len(FAULTS)):
        fault = FAULTS[i - n_good_videos] if i >= n_good_videos else None
        caption, data = videos[i % len(videos)]
        name, key = f"v{i:03d}.mp4", f"{1000 + i}"
        _place(server, name, data, fault)
        (bad_v if fault else ok_v).add(server.url(name) if fault else key)
        csv_rows.append(f'{key},{server.url(name)},PT00H00M10S,{i // 5:06d}_{i // 5 + 1:06d},"{caption}"\n')
    for i in range(n_good_images + len(FAULTS)):
        fault = FAULTS[i - n_good_images] if i >= n_good_images else None
        caption, data = images[i % len(images)]
        name = f"i{i:03d}.jpg"
        _place(server, name, data, fault)
        (bad_i if fault else ok_i).add(server.url(name) if fault else f"{i:09d}")
        tsv_rows.append(f"{caption}\t{server.url(name)}\n")
    server.httpd.files["webvid.csv"] = ("videoid,contentUrl,duration,page_dir,name\n" + "".join(csv_rows)).encode()
    server.httpd.files["cc3m.tsv"] = "".join(tsv_rows).encode()
    server.expected_ok = {"webvid": ok_v, "cc3m": ok_i}
    server.failed_urls = {"webvid": bad_v, "cc3m": bad_i}
    return server


def _place(server: Loopback, name: str, data: bytes, fault: str | None) -> None:
    if fault == "text":  # a text file under a media name: arrives whole, does not decode
        server.httpd.files[name] = b"<html>this video is no longer available</html>\n"
    elif fault != "404":
        server.httpd.files[name] = data
    if fault in ("404", "500", "truncated", "slow"):
        server.httpd.faults[name] = fault
