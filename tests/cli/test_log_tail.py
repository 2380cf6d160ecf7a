"""The last line a live view shows of a running job: its log's last words, read boundedly, never through a link,
a FIFO or a device, and never able to steer the terminal it is shown on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobgraph.cli.log_tail import TAIL_BYTES, last_line


def test_the_last_non_blank_line_is_shown_clean_of_terminal_controls(tmp_path: Path) -> None:
    log = tmp_path / "attempt-1.log"
    assert last_line(log) == ""  # not written yet
    log.write_bytes(b"")
    assert last_line(log) == ""
    log.write_bytes(b"loading\nstep 2 of 3: \x1b[1;31mhot\x1b[0m\tnow\x07\n\n  \n")
    assert last_line(log) == "step 2 of 3: hot now"
    log.write_bytes(b"copying\n 10%\r 55%\r\x1b[2K 90%")  # a progress bar redrawn in place, no newline yet
    assert last_line(log) == "90%"
    log.write_bytes(b"title\x1b]0;pwned\x07 set\n")  # an OSC sequence would set the window's title
    assert last_line(log) == "title set"
    log.write_bytes(b"\x9b31mC1 \xff\xfe bytes\x00\x85\n")  # bytes that are not UTF-8 are only U+FFFD
    assert last_line(log) == "\ufffd31mC1 \ufffd\ufffd bytes\ufffd\ufffd"


def test_a_huge_log_is_read_only_at_its_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "huge.log"
    with log.open("wb") as file:
        file.truncate(1 << 30)  # 1 GiB (sparse): reading it whole would take seconds and a gigabyte
        file.seek(0, os.SEEK_END)
        file.write(b"\nlast words\n")
    read: list[int] = []
    real = os.pread

    def counted(fd: int, size: int, offset: int) -> bytes:
        data = real(fd, size, offset)
        read.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", counted)
    assert last_line(log) == "last words"
    assert sum(read) <= TAIL_BYTES


def test_a_link_a_fifo_or_a_folder_planted_as_the_log_shows_nothing(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere"
    secret.write_text("SECRET-OF-ANOTHER-FILE\n")
    link = tmp_path / "link.log"
    link.symlink_to(secret)
    assert last_line(link) == ""
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    assert last_line(fifo) == ""  # returns at once: a FIFO is never opened (it would block until a writer came)
    assert last_line(tmp_path) == ""
    assert last_line(Path("/dev/zero")) == ""
