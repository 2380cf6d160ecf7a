"""A job's command, args and env with their placeholders filled, for one attempt.

Most jobs have no placeholder: `rendered` hands their own tuples back after a substring test per text,
so a 10,000-job run pays nothing for templates it does not use. A placeholder that has no value
at run time raises TemplateError, which the engine records as that attempt's ERROR.
"""

from __future__ import annotations

from collections.abc import Mapping

from jobgraph.config.model import Job
from jobgraph.config.params import needs_rendering
from jobgraph.template import TemplateError, render, render_all

__all__ = ["needs_rendering", "rendered"]


def rendered(job: Job, values: Mapping[str, object]) -> tuple[tuple[str, ...] | None, tuple[str, ...],
                                                                dict[str, str]]:
    """(command, args, env) of the job with every placeholder replaced by its value in `values`; a value
    holding a NUL byte is refused here, with what it is, rather than by exec as an internal error."""
    command = None if job.command is None else tuple(render_all(job.command, values))
    args = tuple(render_all(job.args, values))
    env = {name: render(text, values) for name, text in job.env.items()}
    if any("\x00" in text for text in (*(command or ()), *args, *env.values())):
        raise TemplateError("a placeholder's value holds a NUL byte, which no command line or environment holds")
    return command, args, env
