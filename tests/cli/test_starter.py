"""`jobgraph init`: the starter pipeline validates and runs as written, and no existing file is ever overwritten."""

from __future__ import annotations

import json
import os
from pathlib import Path

from jobgraph.store import Store
from tests.conftest import Cli, store_url


def test_init_writes_a_starter_that_validates_and_runs_as_written(tmp_path: Path, cli: Cli) -> None:
    said = cli("init", check=0).stdout
    starter = tmp_path / "pipeline.yaml"
    assert "wrote pipeline.yaml" in said and starter.is_file()
    text = starter.read_text()
    assert text.startswith("#") and "jobgraph run pipeline.yaml" in text and "never carry a secret" in text
    assert "ok: pipeline 'starter', 3 jobs" in cli("validate", "pipeline.yaml", check=0).stdout
    cli("run", "pipeline.yaml", check=0)
    runs = json.loads(cli("history", "-f", "json", check=0).stdout)["runs"]
    detail = json.loads(cli("show", runs[0]["run_id"], "-f", "json", check=0).stdout)
    assert {job["name"]: job["state"] for job in detail["jobs"]} == {
        "extract": "SUCCEEDED", "check": "SUCCEEDED", "load": "SUCCEEDED"}
    assert detail["run"]["params"] == {"day": "2024-01-01", "regions": ["eu", "us"]}
    assert {job["name"]: job["return_value"] for job in detail["jobs"]}["load"] == "loaded"
    with Store(store_url(tmp_path)) as records:
        extract = records.attempts(runs[0]["run_id"], "extract")[0]
    assert extract.log_path.read_text().strip() == "extracting 2024-01-01 for [\"eu\",\"us\"]"


def test_init_takes_a_file_name_and_the_starter_takes_params(tmp_path: Path, cli: Cli) -> None:
    cli("init", "etl.yaml", check=0)
    assert "jobgraph run etl.yaml" in (tmp_path / "etl.yaml").read_text()
    cli("run", "etl.yaml", "--param", "day=2025-06-30", "--param", "regions=ap", check=0)
    runs = json.loads(cli("history", "-f", "json", check=0).stdout)["runs"]
    detail = json.loads(cli("show", runs[0]["run_id"], "-f", "json", check=0).stdout)
    assert detail["run"]["params"] == {"day": "2025-06-30", "regions": ["ap"]}


def test_init_never_overwrites_nor_follows_a_link(tmp_path: Path, cli: Cli) -> None:
    mine = tmp_path / "pipeline.yaml"
    mine.write_text("name: mine\n")
    refused = cli("init", check=2)
    assert "pipeline.yaml already exists: nothing was written" in refused.stderr
    assert mine.read_text() == "name: mine\n"

    target = tmp_path / "elsewhere.txt"
    os.symlink(target, tmp_path / "link.yaml")  # a dangling link: writing through it would create the target
    assert "link.yaml already exists" in cli("init", "link.yaml", check=2).stderr
    assert not target.exists()

    missing = cli("init", "no/such/folder/p.yaml", check=2)
    assert "cannot create no/such/folder/p.yaml: No such file or directory; nothing was written" in missing.stderr
    assert "Traceback" not in missing.stderr + refused.stderr


def test_init_quotes_a_name_with_a_space_and_refuses_a_line_break(tmp_path: Path, cli: Cli) -> None:
    said = cli("init", "my etl.yaml", check=0).stdout
    assert "Next: jobgraph run 'my etl.yaml'" in said
    assert "# Run it:     jobgraph run 'my etl.yaml' --param day=2024-01-31" in (tmp_path / "my etl.yaml").read_text()
    cli("validate", "my etl.yaml", check=0)
    refused = cli("init", "x\nname: injected.yaml", check=2)
    assert "'x\\nname: injected.yaml' holds a control character" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["my etl.yaml"]
