"""rap.atomic.atomic_write: the one temp-file-and-rename writer."""

from __future__ import annotations

import pytest

from rap.atomic import atomic_write, write_json_atomic, write_text_atomic


def test_bytes_callback_text_and_json(tmp_path):
    assert atomic_write(tmp_path / "a" / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"  # parents made
    atomic_write(tmp_path / "c.bin", lambda f: f.write(b"xy"), fsync=False)
    assert (tmp_path / "c.bin").read_bytes() == b"xy"
    assert write_text_atomic(tmp_path / "t.txt", "é\n").read_bytes() == "é\n".encode()
    assert write_json_atomic({"k": 1}, tmp_path / "m.json").read_text() == '{\n  "k": 1\n}\n'


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "f.txt", "old")

    def half(f):
        f.write(b"ne")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(path, half)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
