"""One family of exceptions, so the CLI can turn any of them into a clear message and an exit code."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


class JobgraphError(Exception):
    """Base of every error jobgraph raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a pipeline file: where it is and what is wrong."""

    message: str
    job: str | None = None
    field: str | None = None
    line: int | None = None
    column: int | None = None

    def describe(self, file: str) -> str:
        """Render as `file:line:col: job 'x', field 'y': message`."""
        where = file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        parts = [where]
        if self.job is not None:
            parts.append(f"job '{self.job}'")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        return ", ".join(parts) + f": {self.message}"


class ConfigError(JobgraphError):
    """A pipeline file is invalid; nothing was run. Carries every problem found, not just the first."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.describe(file) for p in problems))


class RunnerError(JobgraphError):
    """A runner could not start or control a job (missing image, engine down): recorded as ERROR."""


class StoreError(JobgraphError):
    """The store cannot be opened or does not hold what was asked for."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest known name, compared case-insensitively; '' when none is close."""
    by_key = {k.casefold(): k for k in known}
    close = difflib.get_close_matches(name.casefold(), list(by_key), n=1, cutoff=0.6)
    return f" (did you mean '{by_key[close[0]]}'?)" if close else ""
