"""The application layer speaks through callbacks: importing any of its modules loads neither the command
line's typer and rich nor the web stack, so the web server and the CLI share it without dragging each other in."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import jobgraph.app

SHELLS = ("typer", "click", "rich", "starlette", "uvicorn", "jinja2", "httpx", "jobgraph.cli", "jobgraph.web")
MODULES = sorted(f"jobgraph.app.{m.name}" for m in pkgutil.iter_modules(jobgraph.app.__path__))


def test_every_module_of_the_layer_is_checked() -> None:
    assert {"jobgraph.app.host", "jobgraph.app.pipelines", "jobgraph.app.runs", "jobgraph.app.retry"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_importing_it_loads_no_command_line_or_web_stack(module: str) -> None:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       timeout=60).stdout)
    assert [m for m in loaded if any(m == s or m.startswith(s + ".") for s in SHELLS)] == []


def test_running_a_pipeline_loads_no_sqlalchemy() -> None:
    """`jobgraph run` on SQLite records through sqlite3: the layer's run modules must keep it so."""
    code = ("import json, sys, jobgraph.app.runs, jobgraph.app.retry, jobgraph.app.lost_runs; "
            "print(json.dumps(sorted(sys.modules)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       timeout=60).stdout)
    assert [m for m in loaded if m.startswith(("sqlalchemy", "alembic"))] == []
