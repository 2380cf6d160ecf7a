"""The command line's surface: every command's arguments, options and help, and nothing slow to import.

Typer reads the signature of every command on every start, even for `jobgraph --help`, so this module
imports typer alone. Each command's work lives in the module of its group (inspect, plan, run, show,
doctor, service), imported when the command runs: `validate` never loads the store, and help never
loads rich or the config models. tests/cli/test_imports.py holds every command to that.

No `from __future__ import annotations` here: typer would evaluate every annotation string again on
each start (twice per command), which costs more than building the commands.
"""

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

FileArgument = Annotated[Path, typer.Argument(help="Pipeline file: native YAML/JSON, or the seed's jobconfig.json")]
RunnerOption = Annotated[
    str | None,
    typer.Option("--runner", help="Run every job with this runner: local, podman, docker, slurm, kubernetes or spcs"),
]
StoreOption = Annotated[
    str | None,
    typer.Option("--store", envvar="JOBGRAPH_STORE", help="SQLAlchemy URL of the store "
                 "[default: sqlite:///.jobgraph/jobgraph.db]", show_default=False),
]
RunIdArgument = Annotated[str, typer.Argument(help="A run id (a unique prefix is enough)")]
ParamOption = Annotated[list[str] | None, typer.Option(
    "--param", "-p", metavar="NAME=VALUE", help="A value for one of the pipeline's params (repeatable); "
    "recorded with the run, so never a secret", show_default=False)]
PlanParamOption = Annotated[list[str] | None, typer.Option(
    "--param", "-p", metavar="NAME=VALUE", help="A value for one of the pipeline's params (repeatable), filled "
    "into the plan as a run would get it", show_default=False)]
ExportParamOption = Annotated[list[str] | None, typer.Option(
    "--param", "-p", metavar="NAME=VALUE", help="A value for one of the pipeline's params (repeatable), fixed "
    "in the script (a task graph has no run parameters), so never a secret", show_default=False)]
NameArgument = Annotated[str, typer.Argument(help="A deployed pipeline's name")]


class GraphFormat(StrEnum):
    """Ways to print the DAG."""

    table = "table"
    dot = "dot"
    mermaid = "mermaid"
    json = "json"


class OutputFormat(StrEnum):
    """Ways to print what a command reports: a table to read, or one JSON document for scripts."""

    table = "table"
    json = "json"


FormatOption = Annotated[OutputFormat, typer.Option(
    "--format", "-f", "-o", help="table (to read) or json (one document on stdout, for scripts; fields in the README)")]


class PlanFormat(StrEnum):
    """Ways to print a plan."""

    yaml = "yaml"
    json = "json"


def validate(file: FileArgument, runner: RunnerOption = None, output: FormatOption = OutputFormat.table) -> None:
    """Check a pipeline file; print every problem with its file, job and field. Runs nothing.

    With --format json an invalid file is `{"valid": false, "errors": [...]}` on stdout, still exit 2.
    """
    from jobgraph.cli import inspect

    inspect.validate(file, runner=runner, output=output)


def graph(
    file: FileArgument,
    output: Annotated[GraphFormat, typer.Option("--format", "-f", "-o", help="table, dot, mermaid or json")] = (
        GraphFormat.table
    ),
    dependents: Annotated[str | None, typer.Option(
        "--dependents", help="Only this job's dependents, recursively (Snowflake's task_dependents)")] = None,
    runner: RunnerOption = None,
) -> None:
    """Show the DAG: levels, each job's predecessors, pool, image and retries."""
    from jobgraph.cli import inspect

    inspect.graph(file, output=output, dependents=dependents, runner=runner)


def schema() -> None:
    """Print the JSON Schema of the native pipeline form, for editors and CI checks."""
    from jobgraph.cli import inspect

    inspect.schema()


def plan(
    file: FileArgument,
    runner: RunnerOption = None,
    output: Annotated[PlanFormat, typer.Option("--format", "-f", "-o", help="yaml (to read) or json (for tools)")] = (
        PlanFormat.yaml
    ),
    param: PlanParamOption = None,
) -> None:
    """Show, job by job, exactly what the first attempt would submit, and the schedule's next fire times."""
    from jobgraph.cli import plan

    plan.plan(file, runner=runner, output=output, params=param or [])


OnlyOption = Annotated[list[str] | None, typer.Option(
    "--only", metavar="JOB[,JOB]",
    help="Run only these jobs (comma-separated or repeated); a predecessor left out is not waited for")]
FromOption = Annotated[list[str] | None, typer.Option(
    "--from", metavar="JOB[,JOB]", help="Run this job and everything downstream of it (comma-separated or repeated)")]
UntilOption = Annotated[list[str] | None, typer.Option(
    "--until", metavar="JOB[,JOB]", help="Run this job and everything upstream of it (comma-separated or repeated)")]


def run(file: FileArgument, store: StoreOption = None, runner: RunnerOption = None, only: OnlyOption = None,
        start: FromOption = None, until: UntilOption = None, param: ParamOption = None) -> None:
    """Run a pipeline once, now, with a live view; exit 0 if every job succeeded, 1 if not, 130 if cancelled.

    --only, --from and --until run part of it (given together: the jobs all of them pick); the finalizer
    always runs. The run records which jobs it ran: `show` says so, `retry` keeps to them.
    """
    from jobgraph.cli import run

    run.run(file, store=store, runner=runner, only=only or [], start=start or [], until=until or [],
            params=param or [])


def init(
    file: Annotated[Path, typer.Argument(help="Where to write it (never over an existing file)")] = Path(
        "pipeline.yaml"),
) -> None:
    """Write a commented starter pipeline that validates and runs as it is: `jobgraph run pipeline.yaml`."""
    from jobgraph.cli import starter

    starter.init(file)


def retry(
    run_id: Annotated[str, typer.Argument(help="The run to retry (a unique prefix is enough)")],
    store: StoreOption = None,
    runner: RunnerOption = None,
    file: Annotated[Path | None, typer.Option(
        "--file", exists=True, dir_okay=False,
        help="Rerun with this (repaired) pipeline file instead of the run's stored one; same jobs and edges")] = None,
    job: Annotated[list[str] | None, typer.Option(
        "--job", metavar="JOB[,JOB]",
        help="Run again only this job, even if it succeeded (comma-separated or repeated)")] = None,
    downstream: Annotated[bool, typer.Option(
        "--downstream", help="With --job: also run again every job of the run that depends on it")] = False,
) -> None:
    """Run again a run's failed, skipped and cancelled jobs, keeping what succeeded (EXECUTE TASK ... RETRY LAST).

    With --job, run again the jobs named (and with --downstream what depends on them), whatever they ended as,
    keeping every other job as it ended: Airflow's "clear". Of several retries of one run at once, exactly one
    runs it; the others say who does and exit 2.
    """
    from jobgraph.cli import run

    run.retry(run_id, store=store, runner=runner, file=file, jobs=job or [], downstream=downstream)


def cancel(
    run_id: Annotated[str, typer.Argument(help="The run to cancel (a unique prefix is enough)")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the run has ended (its jobgraph "
                                       "process has 30 s to answer)")] = True,
    store: StoreOption = None,
) -> None:
    """Cancel a running run wherever its jobgraph runs it (another terminal, `serve`), as Ctrl-C there would.

    The request goes through the store; the run's jobgraph process stops its jobs (the finalizer still runs)
    and ends it CANCELLED. A run whose jobgraph process died is closed here. Exit 0 once the run has ended,
    1 if its jobgraph process did not answer in time, 2 for an unknown run or one that has already ended.
    """
    from jobgraph.cli import cancel

    cancel.cancel(run_id, wait=wait, store=store)


def history(
    limit: Annotated[int, typer.Option(help="How many runs")] = 20,
    pipeline: Annotated[str | None, typer.Option(help="Only this pipeline's runs")] = None,
    store: StoreOption = None,
    output: FormatOption = OutputFormat.table,
) -> None:
    """List recent runs, newest first."""
    from jobgraph.cli import show

    show.history(limit=limit, pipeline=pipeline, store=store, output=output)


def show(
    run_id: RunIdArgument,
    store: StoreOption = None,
    output: FormatOption = OutputFormat.table,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Redraw the run's jobs until it ends, then show it and "
                                        "exit with its exit code (0 succeeded, 1 failed, 130 cancelled); with "
                                        "--format json, just wait for its end")] = False,
) -> None:
    """Show one run: every job's state, and every attempt with its status and error."""
    from jobgraph.cli import show

    if watch:
        from jobgraph.cli import watch as watching
        from jobgraph.cli.common import EXIT_CODES

        ended = watching.watch_run(run_id, store=store, live=output == OutputFormat.table)
        show.show(ended.run_id, store=store, output=output)
        raise typer.Exit(EXIT_CODES[ended.state])
    show.show(run_id, store=store, output=output)


def logs(
    run_id: RunIdArgument,
    job: Annotated[str, typer.Argument(help="The job's name")],
    attempt: Annotated[int | None, typer.Option(help="Which attempt [default: the last]")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing what a running attempt appends "
                                         "until it ends (and, without --attempt, the job's retries)")] = False,
    store: StoreOption = None,
) -> None:
    """Print the full output of one attempt of a job, as it is stored (streamed: any size)."""
    from jobgraph.cli import show

    show.logs(run_id, job, attempt=attempt, store=store, follow=follow)


def stats(
    view: Annotated[str, typer.Argument(help="jobs_run_stats, task_logging_stats, job_attempts")],
    limit: Annotated[int, typer.Option(help="How many rows")] = 10,
    store: StoreOption = None,
) -> None:
    """Print a view: jobs_run_stats (per job and graph run), task_logging_stats (the finalizer's), job_attempts.

    Times are UTC; the column headers say so.
    """
    from jobgraph.cli import show

    show.stats(view, limit=limit, store=store)


def doctor(
    engine: Annotated[str, typer.Option(help="podman or docker: which engine's usual sockets to look at")] = "podman",
) -> None:
    """Check the container set-up: engine, version, Podman's settings here, the images the demo needs."""
    from jobgraph.cli import doctor

    doctor.doctor(engine)


def deploy(file: FileArgument, store: StoreOption = None, runner: RunnerOption = None,
           param: ParamOption = None) -> None:
    """Store a pipeline (validated, versioned by content) with its schedule: the seed's create_job_tasks().

    --param values become the params' defaults in the deployed version: scheduled runs use them."""
    from jobgraph.cli import service

    service.deploy(file, store=store, runner=runner, params=param or [])


def pipelines(store: StoreOption = None, output: FormatOption = OutputFormat.table) -> None:
    """List deployed pipelines: schedule, state, version, last and next run."""
    from jobgraph.cli import service

    service.pipelines(store=store, output=output)


def suspend(name: NameArgument, store: StoreOption = None) -> None:
    """Stop scheduling a pipeline (runs in progress go on): ALTER TASK ... SUSPEND."""
    from jobgraph.cli import service

    service.suspend(name, store=store)


def resume(name: NameArgument, store: StoreOption = None) -> None:
    """Schedule a suspended pipeline again, counting its schedule from now: ALTER TASK ... RESUME."""
    from jobgraph.cli import service

    service.resume(name, store=store)


def trigger(name: NameArgument, store: StoreOption = None, runner: RunnerOption = None,
            param: ParamOption = None) -> None:
    """Run a deployed pipeline now (EXECUTE TASK root_task): by the running service if there is one, else here.

    Through the service it waits until the service has taken the request and says what it did: exit 0 when it
    started or queued a run, 1 when overlap made it skip it. With no live service it runs the pipeline here.
    """
    from jobgraph.cli import service

    service.trigger(name, store=store, runner=runner, params=param or [])


def drop(
    name: NameArgument,
    purge: Annotated[bool, typer.Option(help="Also delete the pipeline's runs, attempts and versions")] = False,
    store: StoreOption = None,
) -> None:
    """Remove a deployed pipeline and its schedule (the seed's drop_job_tasks()); history stays unless --purge.

    --purge also works after a plain drop, and is refused while a run of the pipeline is in progress.
    """
    from jobgraph.cli import service

    service.drop(name, purge=purge, store=store)


def serve(
    store: StoreOption = None,
    runner: RunnerOption = None,
    tick: Annotated[float, typer.Option(help="Seconds between polls of the store when nothing wakes the scheduler "
                                        "sooner (a fire time, a trigger or deploy wakes it at once)",
                                        min=0.05, max=60)] = 1.0,
    drain: Annotated[bool, typer.Option(help="On SIGTERM, let running runs finish instead of cancelling them")] = False,
    http: Annotated[str | None, typer.Option(
        "--http", help="Also serve the web page and the HTTP API at HOST:PORT (e.g. 127.0.0.1:8787); off loopback "
        "a token is needed in the store, and then for every request")] = None,
) -> None:
    """Run the scheduler and every triggered run until SIGTERM or Ctrl-C; one line per event."""
    from jobgraph.cli import service

    service.serve(store=store, runner=runner, tick=tick, drain=drain, http=http)


def web(
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs a token in the store, "
                                      "and then every request needs one")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on", min=0, max=65535)] = 8787,
    store: StoreOption = None,
    runner: RunnerOption = None,
) -> None:
    """Serve the web page and the HTTP API (/api/v1) over the store; runs it starts end with it (SIGINT, SIGTERM)."""
    from jobgraph.cli import web

    web.web(host=host, port=port, store=store, runner=runner)


token = typer.Typer(name="token", help="API tokens for the web page and the HTTP API: create, list, revoke.",
                    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


class TokenScope(StrEnum):
    """What a token may do."""

    read = "read"
    operate = "operate"
    admin = "admin"


@token.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="A name for the token (who or what uses it)")],
    scope: Annotated[TokenScope, typer.Option(help="read: see; operate: also trigger, retry, cancel, suspend, "
                                              "resume; admin: as operate for now (kept for managing jobgraph itself)")],
    expires: Annotated[int | None, typer.Option(help="Days until it stops working [default: never]")] = None,
    store: StoreOption = None,
) -> None:
    """Make a token and print it once (only its hash is stored)."""
    from jobgraph.cli import web

    web.token_create(name, scope.value, expires=expires, store=store)


@token.command("list")
def token_list(store: StoreOption = None) -> None:
    """List the tokens: name, scope, when made, last used, expiry, status. Never a token itself."""
    from jobgraph.cli import web

    web.token_list(store=store)


@token.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name")],
    store: StoreOption = None,
) -> None:
    """Revoke a token: it stops working at once."""
    from jobgraph.cli import web

    web.token_revoke(name, store=store)


export = typer.Typer(name="export", help="Write a pipeline out for another engine to run natively.",
                     no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@export.command("snowflake")
def export_snowflake(
    file: FileArgument,
    output: Annotated[Path | None, typer.Option("--output", "-o", dir_okay=False,
                                                help="Write the script to this file instead of stdout")] = None,
    teardown: Annotated[bool, typer.Option("--teardown", help="Print only the statements that remove the task "
                                           "graph (the seed's drop_job_tasks()), to run")] = False,
    root_task: Annotated[str | None, typer.Option("--root-task", help="The root task's name [default: root_task "
                                                  "for the seed's jobconfig.json, else the pipeline's name]")] = None,
    param: ExportParamOption = None,
) -> None:
    """Print the SQL that builds the pipeline as a native Snowflake task graph: the seed's logging tables, a
    root task with the schedule, one task per job running its SPCS job service, the finalizer GET_GRAPH_STATS,
    and the teardown (as comments). What Snowflake cannot express is said in the SQL and warned on stderr.
    A task graph has no run parameters: the params' values (--param, else the defaults) are fixed in the script.
    Nothing is run or contacted.
    """
    from jobgraph.cli import export as exporter

    exporter.snowflake(file, output=output, teardown=teardown, root_task=root_task, params=param or [])
