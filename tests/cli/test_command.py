"""`command:` instead of an image: a local job's host command as an argv list, run without a shell."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Cli, WritePipeline


def test_a_command_job_runs_its_argv_without_a_shell_and_needs_no_images_entry(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    out = tmp_path / "argv.json"
    program = f"import json, sys; open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))"
    write_pipeline({"name": "cmd", "jobs": [
        {"name": "a", "command": ["python", "-c", program, "$(touch pwned)", "a b; c"], "args": ["*", "last"]}]},
        with_sh=False)
    cli("run", "pipeline.yaml", check=0)
    assert json.loads(out.read_text()) == ["$(touch pwned)", "a b; c", "*", "last"]
    assert not (tmp_path / "pwned").exists()
    graph = json.loads(cli("graph", "pipeline.yaml", "-f", "json", check=0).stdout)
    assert graph["jobs"][0]["image"] == "(command)"
    runs = json.loads(cli("history", "-f", "json", check=0).stdout)["runs"]
    assert runs[0]["job_counts"] == {"SUCCEEDED": 1}


def test_a_command_is_refused_with_an_image_or_on_a_container_runner(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "cmd", "jobs": [{"name": "both", "image": "sh", "command": ["true"]}]})
    assert "pipeline.yaml, job 'both', field 'command': a job runs either an image or a command, not both" in \
        cli("validate", "pipeline.yaml", check=2).stderr
    write_pipeline({"name": "cmd", "jobs": [{"name": "c", "command": ["true"]}]}, with_sh=False)
    refused = cli("validate", "pipeline.yaml", "--runner", "podman", check=2).stderr
    assert "job 'c', field 'command': a command is run on the host, which the podman runner cannot do" in refused
    for bad, message in (([], "field 'command': Tuple should have at least 1 item"),
                         (["ok", "nul\u0000"], "contains a NUL byte"), ("echo hi", "Input should be a valid tuple")):
        write_pipeline({"name": "cmd", "jobs": [{"name": "c", "command": bad}]}, with_sh=False)
        assert message in cli("validate", "pipeline.yaml", check=2).stderr, bad
    write_pipeline({"name": "cmd", "jobs": [{"name": "c"}]}, with_sh=False)
    assert "job 'c', field 'image': is required" in cli("validate", "pipeline.yaml", check=2).stderr


def test_the_schema_takes_a_job_with_an_image_or_a_command(cli: Cli) -> None:
    schema = json.loads(cli("schema", check=0).stdout)
    for model in ("Job", "Finalizer"):
        assert "image" not in schema["$defs"][model].get("required", [])
        assert schema["$defs"][model]["anyOf"] == [{"required": ["image"]}, {"required": ["command"]}]
    assert list(schema["$defs"]["Param"]["properties"]) == ["name", "type", "default", "description"]
