"""The output module on real files, FIFOs and links: redaction in a stream, the log cap, bounded safe reads."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from jobgraph.runners.output import LogWriter, UnsafeFile, open_regular, read_return_value, scrub_return_file, tail
from jobgraph.runners.redaction import Redactor

PEM = ("-----BEGIN PRIVATE KEY-----\n"
       "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKB\n"
       "UnlGmPaGdRlpRwqZr2LWnUVPqGkTRB9yCvzqxUwqjQIDAQABAoIBAQCRbLPjsYLo\n"
       "AB==\n"
       "-----END PRIVATE KEY-----\n")
PEM_LINES = [line for line in PEM.splitlines() if len(line) >= 4]


def test_a_multi_line_secret_is_hidden_whole_and_line_by_line() -> None:
    redactor = Redactor([PEM, "tok3n"])
    assert redactor.text(f"key: {PEM} end") == "key: *** end"
    shuffled = "\n".join(f"line: {line}" for line in reversed(PEM.splitlines()))
    hidden = redactor.text(shuffled)
    assert all(line not in hidden for line in PEM_LINES), hidden
    assert "line: ***" in hidden
    assert redactor.data(b"a tok3n b") == b"a *** b"
    assert Redactor(["ab\ncd\nlong-enough"]).text("ab cd long-enough") == "ab cd ***"


@pytest.mark.parametrize("secret", ["s3cr3t-value", PEM])
def test_a_streamed_log_never_holds_a_secret_or_a_piece_of_one(tmp_path: Path, secret: str) -> None:
    """Fed in chunks cut at every position, the file never holds the secret, nor its start while it streams."""
    data = f"before {secret} middle {secret}{secret} after\n".encode()
    redactor = Redactor([secret])
    encoded = secret.encode()
    for cut in range(1, len(data)):
        path = tmp_path / f"log-{cut}"
        writer = LogWriter(path, redactor, limit=1 << 20)
        writer.write(data[:cut])
        partial = path.read_bytes()
        assert not any(partial.endswith(encoded[:k]) for k in range(8, len(encoded) + 1)), (cut, partial)
        writer.write(data[cut:])
        writer.close()
        stored = path.read_bytes()
        assert stored == redactor.data(data) or all(p not in stored for p in redactor.patterns), (cut, stored)
        assert b"before " in stored and b"after" in stored


def test_the_log_is_cut_at_its_limit_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "log"
    writer = LogWriter(path, Redactor([]), limit=4096)
    for _ in range(100):
        writer.write(b"x" * 1000)
    writer.close()
    stored = path.read_bytes()
    assert stored.startswith(b"x" * 4096) and stored.count(b"x") == 4096
    assert b"[jobgraph: the log reached its limit of 4 KiB (log_limit); the rest of the job's output is not stored]" \
        in stored
    assert writer.cut


def test_a_log_is_created_never_through_what_was_planted(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    log = tmp_path / "log"
    log.symlink_to(victim)
    writer = LogWriter(log, Redactor([]))
    writer.write(b"output")
    writer.close()
    assert victim.read_text() == "precious"
    assert not log.is_symlink() and log.read_bytes() == b"output"


def test_return_values_are_read_only_from_regular_files(tmp_path: Path) -> None:
    host = tmp_path / "host-file"
    host.write_text("HOST SECRET")
    link = tmp_path / "link"
    link.symlink_to(host)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    started = time.monotonic()
    for unsafe in (link, fifo, folder, zero):
        assert read_return_value(unsafe, Redactor([]), 10_000) is None
        with pytest.raises(UnsafeFile):
            os.close(open_regular(unsafe))
    assert time.monotonic() - started < 1.0
    assert read_return_value(tmp_path / "missing", Redactor([]), 10_000) is None
    assert tail(link, 4096) == "" and tail(fifo, 4096) == ""


def test_a_huge_sparse_return_value_is_read_bounded_and_nul_free(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as file:
        file.write(b"value\x00with a nul\n")
        file.truncate(5 << 30)
    value = read_return_value(sparse, Redactor([]), 10_000)
    assert value is not None and value.startswith("value\ufffdwith a nul\n\ufffd")
    assert "\x00" not in value and value.count("\ufffd") == 10_000 - len("valuewith a nul\n")


def test_a_secret_straddling_the_return_value_cut_is_hidden(tmp_path: Path) -> None:
    path = tmp_path / "value"
    path.write_bytes(b"x" * 9_995 + b"s3cr3t-value")
    value = read_return_value(path, Redactor(["s3cr3t-value"]), 10_000)
    assert value == "x" * 9_995 + "***"


def test_a_return_file_with_a_secret_is_scrubbed_and_links_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "return"
    path.write_text(f"the key is {PEM}")
    scrub_return_file(path, Redactor([PEM]))
    assert path.read_text() == "the key is ***"
    host = tmp_path / "host"
    host.write_text(f"host file {PEM}")
    path.unlink()
    path.symlink_to(host)
    scrub_return_file(path, Redactor([PEM]))
    assert host.read_text() == f"host file {PEM}" and path.is_symlink()
    big = tmp_path / "big"
    with big.open("wb") as file:
        file.write(b"no secret at the start")
        file.truncate(1 << 30)
    scrub_return_file(big, Redactor([PEM]))
    assert big.stat().st_size == 1 << 16 and big.read_bytes().startswith(b"no secret at the start")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "host", "return"]
