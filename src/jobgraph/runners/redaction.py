"""Hiding a run's secret values wherever a job's words go: its log, its errors, its return value, `plan`.

Split from runners/output.py, which reads and writes what a job leaves; redaction is also what the
engine, notifications and the manifests of the remote runners use, for text that never was a file.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

REDACTED = "***"

MIN_SECRET_LINE = 4
"""A multi-line secret (a PEM key) is also hidden line by line: each stripped line at least this long.

A job that prints its key through `while read line` or a tool that re-wraps it must not leak it a line
at a time. Base64 lines come in multiples of 4 characters, so the shortest line of a PEM body (its
last, e.g. `AB==`) is still hidden; lines of 1 to 3 characters (`}`, `==`, blank) carry next to
nothing of the secret and would blank out every log they appear in.
"""

class Redactor:
    """Hides declared secret values in a job's output: each whole value, and each non-trivial line of it."""

    def __init__(self, secret_values: Iterable[str]) -> None:
        texts: set[str] = set()
        for value in secret_values:
            if value:
                texts.add(value)
                texts.update(s for s in (line.strip() for line in value.splitlines()) if len(s) >= MIN_SECRET_LINE)
        self.texts = tuple(sorted(texts, key=len, reverse=True))
        self.patterns = tuple(t.encode("utf-8", "surrogateescape") for t in self.texts)
        self.longest = len(self.patterns[0]) if self.patterns else 0

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def text(self, text: str) -> str:
        """The text with every secret (longest first) replaced by `***`."""
        for secret in self.texts:
            text = text.replace(secret, REDACTED)
        return text

    def data(self, data: bytes) -> bytes:
        """The bytes with every secret (longest first) replaced by `***`."""
        for pattern in self.patterns:
            data = data.replace(pattern, b"***")
        return data

    def unsafe_tail(self, data: bytes) -> int:
        """How many bytes at the end of redacted `data` could begin a secret that the next chunk completes.

        Those bytes are held back by a stream, so no prefix of a secret is ever written out.
        """
        held = 0
        for pattern in self.patterns:
            first = pattern[:1]
            at = data.find(first, max(0, len(data) - len(pattern) + 1))
            while at != -1 and len(data) - at > held:
                if pattern.startswith(data[at:]):
                    held = len(data) - at
                    break
                at = data.find(first, at + 1)
        return held


@functools.lru_cache(maxsize=32)
def redactor_for(secret_values: frozenset[str]) -> Redactor:
    """The redactor for a set of secret values, built once per run rather than once per job."""
    return Redactor(secret_values)


def shown_env(env: Mapping[str, str], secret_values: frozenset[str]) -> dict[str, str]:
    """An environment as `jobgraph plan` shows it: a secret as a `${NAME}` reference, secrets redacted elsewhere."""
    redactor = redactor_for(secret_values)
    return {name: f"${{{name}}}" if value in secret_values else redactor.text(value) for name, value in env.items()}


def stored_text(text: str, redactor: Redactor) -> str:
    """A message about a job (an error, a reason) made safe to store and show: no secret, no NUL."""
    return redactor.text(text).replace("\x00", "\ufffd")
