"""`jobgraph run`'s closing summary, as a user reads it."""

from __future__ import annotations

from tests.conftest import Cli, WritePipeline, sh


def test_a_big_runs_summary_shows_its_rows_failures_first(cli: Cli, write_pipeline: WritePipeline) -> None:
    jobs = [sh(f"ok_{i}", "true") for i in range(50)] + [sh("broken", "exit 3")]
    write_pipeline({"jobs": jobs})
    out = cli("run", "pipeline.yaml", check=1).stdout
    summary = out[out.index("run ", out.index(" FAILED\n")):]
    rows = [line for line in summary.splitlines() if line.startswith("│")]
    assert len(rows) == 40
    assert "broken" in rows[0] and "FAILED" in rows[0]
    assert all("SUCCEEDED" in row for row in rows[1:])
    assert "1 failed, 50 succeeded" in summary and "jobgraph show" in summary
