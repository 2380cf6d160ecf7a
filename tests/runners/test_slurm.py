"""The Slurm runner against the real single-node cluster scripts/setup-slurm.sh starts (never a fake Slurm).

Each test drives SlurmRunner with JobSpecs as the engine does, and checks Slurm's own view (squeue),
the processes on this host (/proc) and the files in the attempt's folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import ValidationError

from jobgraph.errors import RunnerError
from jobgraph.runners.base import Cause, JobSpec
from jobgraph.runners.slurm import SlurmHandle, SlurmRunner
from jobgraph.runners.slurm_batch import EXIT_CODE_FILE, SlurmSettings
from jobgraph.runners.slurm_states import ACTIVE_STATES, SlurmJob, outcome_of
from jobgraph.states import AttemptStatus

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
IMAGES = {"sh": ["sh", "-c"], "python": ["python", "-c"]}


def squeue_state(job_id: str) -> str | None:
    """Slurm's own word on a job, None once the controller no longer lists it."""
    result = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"], capture_output=True,
                            text=True, timeout=30)
    return result.stdout.strip() or None


def processes_with(marker: str) -> list[int]:
    """Live processes on this host whose command line holds `marker` (the jobs run here)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                    if marker.encode() in cmdline.read():
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


class Cluster:
    """Makes runners and specs for one test, and leaves nothing of it in Slurm."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.run_id = f"run{time.time_ns()}"
        self.job_ids: list[str] = []

    def runner(self, **settings: Any) -> SlurmRunner:
        options = {"poll_interval": 0.2, **settings}
        return SlurmRunner(IMAGES, SlurmSettings(**options), self.tmp_path / ".jobgraph", cwd=self.tmp_path)

    def spec(self, task: str, script: str, image: str = "sh", attempt: int = 1, **fields: Any) -> JobSpec:
        env = {"JOBGRAPH_TASK": task, **fields.pop("env", {})}
        return JobSpec(self.run_id, "p", task, attempt, image, (script,), env,
                       self.tmp_path / "logs" / task / f"attempt-{attempt}.log", **fields)

    async def start(self, runner: SlurmRunner, spec: JobSpec) -> SlurmHandle:
        handle = await runner.start(spec)
        self.job_ids.append(runner.handle_ref(handle))
        return handle


@pytest.fixture
def cluster(slurm: None, tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    yield made
    left = [job for job in made.job_ids if squeue_state(job) in ACTIVE_STATES]
    if left:
        subprocess.run(["scancel", *left], capture_output=True, timeout=30)
    assert left == [], "jobs left in Slurm"


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), 60)

    return asyncio.run(bounded())


def test_a_job_gets_its_env_and_args_and_returns_a_value(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job gets its env, and of jobgraph's own only PATH, HOME and SLURM_CONF."""
    monkeypatch.setenv("JOBGRAPH_OWN_VARIABLE", "leaked")
    secret = "s3cr3t-value"
    spec = cluster.spec("hello", 'echo "args=$0 greeting=$GREETING key=$API_KEY '
                        'own=${JOBGRAPH_OWN_VARIABLE:-unset} home=$HOME"; '
                        'printf %s "$GREETING" > "$JOBGRAPH_RETURN_VALUE_FILE"',
                        env={"GREETING": "a,b=c 'd' \"e\" $HOME", "API_KEY": secret},
                        secret_values=frozenset({secret}))
    runner = cluster.runner()

    async def main() -> tuple[Any, ...]:
        await runner.open()
        handle = await cluster.start(runner, spec)
        outcome = await runner.wait(handle)
        values = (outcome, await runner.logs(handle, 1000), await runner.read_return_value(handle, 100), handle)
        await runner.aclose()
        return values

    outcome, logs, value, handle = run(main)
    assert (outcome.status, outcome.exit_code) == (AttemptStatus.DONE, 0)
    assert value == "a,b=c 'd' \"e\" $HOME"
    assert logs == f"args=sh greeting=a,b=c 'd' \"e\" $HOME key=*** own=unset home={os.environ['HOME']}\n"
    assert spec.log_path.read_text() == logs
    assert not (handle.folder / "output.log").exists()  # the shared copy held the secret: removed once copied
    assert squeue_state(handle.job_id) == "COMPLETED"
    plan = runner.describe(spec)
    assert secret not in json.dumps(plan)
    assert 'export API_KEY="${API_KEY}"' in str(plan["stdin"])
    assert set(plan["env"]) <= {"PATH", "HOME", "SLURM_CONF"}  # type: ignore[arg-type]
    assert "--export=ALL" in plan["argv"] and f"--comment=jobgraph:{cluster.run_id}/hello/1" in plan["argv"]


def test_timeout_cpu_memory_and_settings_become_sbatch_flags_slurm_accepts(cluster: Cluster) -> None:
    runner = cluster.runner(partition="debug", extra_sbatch_args=["--nice=10"])
    base = cluster.spec("sized", "true", cpu=1.5, memory_bytes=100 << 20)
    spec = replace(base, timeout=61)

    async def main() -> SlurmHandle:
        handle = await cluster.start(runner, spec)
        await runner.wait(handle)
        await runner.aclose()
        return handle

    handle = run(main)
    argv = runner.describe(spec)["argv"]
    assert argv[-5:] == ["--time=2", "--cpus-per-task=2", "--mem=100M", "--partition=debug", "--nice=10"]
    shown = subprocess.run(["scontrol", "show", "job", "-o", handle.job_id], capture_output=True, text=True,
                           check=True).stdout
    for field in ("TimeLimit=00:02:00", "NumCPUs=2", "mem=100M", "Partition=debug", "Nice=10", "JobState=COMPLETED",
                  f"Comment=jobgraph:{cluster.run_id}/sized/1", f"StdOut={handle.folder}/output.log"):
        assert field in shown


def test_a_failing_job_has_its_exit_code_and_output(cluster: Cluster) -> None:
    runner = cluster.runner()

    async def main() -> tuple[Any, ...]:
        handle = await cluster.start(runner, cluster.spec("bad", "echo 'table results_1 is missing' >&2; exit 3"))
        outcome = await runner.wait(handle)
        values = (outcome, await runner.logs(handle, 1000), handle)
        await runner.aclose()
        return values

    outcome, logs, handle = run(main)
    assert (outcome.status, outcome.exit_code, outcome.error) == (AttemptStatus.FAILED, 3, "exit code 3")
    assert logs == "table results_1 is missing\n"
    assert (handle.folder / EXIT_CODE_FILE).read_text() == f"{handle.job_id} 3\n"
    assert squeue_state(handle.job_id) == "FAILED"


def test_a_job_over_its_memory_is_failed_as_out_of_memory(cluster: Cluster) -> None:
    runner = cluster.runner()
    grab = "import time; b = bytearray(400 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(20)"

    async def main() -> Any:
        handle = await cluster.start(runner, cluster.spec("greedy", grab, image="python", memory_bytes=64 << 20))
        outcome = await runner.wait(handle)
        await runner.aclose()
        return outcome

    outcome = run(main)
    assert outcome.status == AttemptStatus.FAILED
    assert outcome.error.startswith("out of memory (--mem=64M): Slurm killed the job")


def test_cancel_on_timeout_leaves_nothing_in_slurm_or_on_the_host(cluster: Cluster) -> None:
    runner = cluster.runner()
    marker = f"jobgraph-test-{cluster.run_id}"

    async def main() -> tuple[SlurmHandle, list[int], Any]:
        handle = await cluster.start(runner, cluster.spec("slow", f"sleep 300 # {marker}"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(runner.wait(handle), 2.0)
        running = processes_with(marker)
        await runner.cancel(handle)
        outcome = await runner.wait(handle)
        await runner.aclose()
        return handle, running, outcome

    handle, running, outcome = run(main)
    assert running, "the job was not running when it was cancelled"
    assert squeue_state(handle.job_id) == "CANCELLED"
    assert processes_with(marker) == []
    assert outcome.status == AttemptStatus.CANCELLED


def test_a_term_signal_after_our_cancel_is_cancelled_not_failed(cluster: Cluster) -> None:
    """`scancel --signal=TERM --full` ends a job FAILED 0:15: after jobgraph's cancel that is CANCELLED."""
    runner = cluster.runner()

    async def main() -> tuple[SlurmHandle, Any]:
        marker = f"jobgraph-test-{cluster.run_id}"
        handle = await cluster.start(runner, cluster.spec("term", f"sleep 300 # {marker}"))
        while not processes_with(marker):  # RUNNING in squeue comes before the script has started
            await asyncio.sleep(0.1)
        handle.cancelled = True
        subprocess.run(["scancel", "--signal=TERM", "--full", handle.job_id], check=True, timeout=30)
        outcome = await runner.wait(handle)
        await runner.aclose()
        return handle, outcome

    handle, outcome = run(main)
    assert squeue_state(handle.job_id) == "FAILED"
    assert outcome.status == AttemptStatus.CANCELLED
    assert outcome.exit_code == 128 + 15


def test_a_cancel_while_sbatch_runs_does_not_lose_the_job(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch is slowed after it submitted (a wrapper on PATH), so the cancel lands between the two."""
    wrappers = cluster.tmp_path / "bin"
    wrappers.mkdir()
    (wrappers / "sbatch").write_text(f'#!/bin/sh\n{shutil.which("sbatch")} "$@"\ncode=$?\nsleep 1\nexit $code\n')
    (wrappers / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    runner = cluster.runner()
    tag = f"jobgraph:{cluster.run_id}/caught/1"

    def ours() -> list[str]:
        listed = subprocess.run(["squeue", "-h", "--states=all", "-O", "JobID:|,State:|,Comment:"],
                                capture_output=True, text=True, timeout=30).stdout.splitlines()
        return [line for line in listed if line.endswith(f"|{tag}")]

    async def main() -> list[str]:
        starting = asyncio.create_task(runner.start(cluster.spec("caught", "sleep 300")))
        while not ours():
            await asyncio.sleep(0.05)
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        await runner.aclose()
        return ours()

    left = run(main)
    assert len(left) == 1 and left[0].split("|")[1] == "CANCELLED", left


def test_a_new_runner_adopts_a_running_job_and_gets_its_real_end(cluster: Cluster) -> None:
    spec = cluster.spec("long", "sleep 3; echo finished late; exit 7")
    first, second = cluster.runner(), cluster.runner()

    async def main() -> tuple[str | None, Any, str]:
        handle = await cluster.start(first, spec)
        ref = first.handle_ref(handle)
        await first.aclose()  # jobgraph dies: the job goes on
        while squeue_state(ref) == "PENDING":
            await asyncio.sleep(0.1)
        state_at_adoption = squeue_state(ref)
        adopted = await second.adopt(ref, spec)
        outcome = await second.wait(adopted)
        logs = await second.logs(adopted, 100)
        await second.aclose()
        return state_at_adoption, outcome, logs

    state_at_adoption, outcome, logs = run(main)
    assert state_at_adoption == "RUNNING"
    assert (outcome.status, outcome.exit_code) == (AttemptStatus.FAILED, 7)
    assert logs == "finished late\n"
    assert spec.log_path.read_text() == "finished late\n"


def test_a_pending_job_is_adopted_and_followed_to_its_end(cluster: Cluster) -> None:
    spec = cluster.spec("later", "exit 6")
    first, second = cluster.runner(extra_sbatch_args=["--begin=now+600"]), cluster.runner()

    async def main() -> tuple[str | None, Any]:
        handle = await cluster.start(first, spec)
        await first.aclose()
        adopted = await second.adopt(handle.job_id, spec)
        await asyncio.sleep(0.5)  # a poll or two while it waits for its begin time
        state_while_adopted = squeue_state(handle.job_id)
        subprocess.run(["scontrol", "update", f"jobid={handle.job_id}", "StartTime=now"], check=True, timeout=30)
        outcome = await second.wait(adopted)
        await second.aclose()
        return state_while_adopted, outcome

    state_while_adopted, outcome = run(main)
    assert state_while_adopted == "PENDING"
    assert (outcome.status, outcome.exit_code) == (AttemptStatus.FAILED, 6)


def test_a_job_that_ended_while_nobody_watched_is_adopted_with_its_exit_code(cluster: Cluster) -> None:
    spec = cluster.spec("quick", "exit 5")
    first, second = cluster.runner(), cluster.runner()

    async def main() -> Any:
        handle = await cluster.start(first, spec)
        await first.aclose()
        while squeue_state(handle.job_id) in ACTIVE_STATES:
            await asyncio.sleep(0.1)
        outcome = await second.wait(await second.adopt(handle.job_id, spec))
        await second.aclose()
        return outcome

    outcome = run(main)
    assert (outcome.status, outcome.exit_code) == (AttemptStatus.FAILED, 5)


def test_a_job_slurm_forgot_is_judged_by_its_exit_code_file(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MinJobAge the controller answers "Invalid job id" (as a wrapper on PATH makes it say here);
    the exit code file the job wrote is believed only for the job id written in it."""
    spec = cluster.spec("forgotten", "exit 4")
    first = cluster.runner()

    async def ended() -> SlurmHandle:
        handle = await cluster.start(first, spec)
        await first.wait(handle)
        await first.aclose()
        return handle

    handle = run(ended)
    wrappers = cluster.tmp_path / "bin"
    wrappers.mkdir()
    (wrappers / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    (wrappers / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")

    async def adopt(ref: str) -> Any:
        runner = cluster.runner()
        outcome = await runner.wait(await runner.adopt(ref, spec))
        await runner.aclose()
        return outcome

    assert (run(lambda: adopt(handle.job_id)).exit_code, run(lambda: adopt(handle.job_id)).status) == (
        4, AttemptStatus.FAILED)
    other = run(lambda: adopt(str(int(handle.job_id) + 100000)))
    assert other.status == AttemptStatus.ERROR
    assert "does not know job" in other.error and "left no exit code" in other.error


def test_a_bogus_ref_is_an_error(cluster: Cluster) -> None:
    runner = cluster.runner()
    spec = cluster.spec("ghost", "true")

    async def main() -> Any:
        with pytest.raises(RunnerError, match="is not a Slurm job id"):
            await runner.adopt("12; rm -rf /", spec)
        unknown = await runner.wait(await runner.adopt("987654321", spec))
        await runner.aclose()
        return unknown

    unknown = run(main)
    assert unknown.status == AttemptStatus.ERROR and "does not know job 987654321" in unknown.error


def test_a_job_of_another_attempt_is_not_adopted(cluster: Cluster) -> None:
    runner, adopter = cluster.runner(), cluster.runner()

    async def main() -> Any:
        handle = await cluster.start(runner, cluster.spec("mine", "sleep 1"))
        outcome = await adopter.wait(await adopter.adopt(handle.job_id, cluster.spec("mine", "sleep 1", attempt=2)))
        await runner.wait(handle)
        await runner.aclose()
        await adopter.aclose()
        return outcome

    outcome = run(main)
    assert outcome.status == AttemptStatus.ERROR
    assert "is not this attempt's job" in outcome.error and "/mine/1" in outcome.error


def test_planted_links_and_fifos_are_not_followed(cluster: Cluster) -> None:
    runner = cluster.runner()
    link = cluster.spec("link", 'ln -s /etc/passwd "$JOBGRAPH_RETURN_VALUE_FILE"; echo root-ish')
    fifo = cluster.spec("fifo", 'mkfifo "$JOBGRAPH_RETURN_VALUE_FILE"; cd "$(dirname "$JOBGRAPH_RETURN_VALUE_FILE")"; '
                        'rm output.log; ln -s /etc/passwd output.log')

    async def main() -> tuple[Any, ...]:
        first = await cluster.start(runner, link)
        second = await cluster.start(runner, fifo)
        outcomes = (await runner.wait(first), await runner.wait(second))
        values = (await runner.read_return_value(first, 100), await runner.read_return_value(second, 100),
                  await runner.logs(second, 1000))
        await runner.aclose()
        return outcomes, values

    outcomes, (linked, piped, logs) = run(main)
    assert [o.status for o in outcomes] == [AttemptStatus.DONE, AttemptStatus.DONE]
    assert (linked, piped, logs) == (None, None, "")


def test_one_squeue_per_poll_for_all_jobs_in_flight(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    wrappers = cluster.tmp_path / "bin"
    wrappers.mkdir()
    calls = cluster.tmp_path / "squeue-calls"
    real = shutil.which("squeue")
    (wrappers / "squeue").write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {real} "$@"\n')
    (wrappers / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    interval = 0.5
    runner = cluster.runner(poll_interval=interval)

    async def main() -> tuple[list[Any], float]:
        began = time.monotonic()
        handles = [await cluster.start(runner, cluster.spec(f"j{i}", "sleep 1")) for i in range(4)]
        outcomes = await asyncio.gather(*(runner.wait(h) for h in handles))
        took = time.monotonic() - began
        await runner.aclose()
        return outcomes, took

    outcomes, took = run(main)
    assert [o.status for o in outcomes] == [AttemptStatus.DONE] * 4
    polls = calls.read_text().splitlines()
    assert len(polls) <= took / interval + 2, polls
    everyone = "--jobs=" + ",".join(cluster.job_ids)
    assert any(everyone in poll for poll in polls), polls


def test_a_slurm_that_stops_answering_is_an_error_and_the_job_is_left_alone(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = cluster.tmp_path / "slurm.conf"
    broken.write_text(Path("/etc/slurm/slurm.conf").read_text() + "SlurmctldPort=1\n")
    runner = cluster.runner(controller_timeout=1.0)

    async def main() -> tuple[SlurmHandle, Any]:
        handle = await cluster.start(runner, cluster.spec("orphan", "sleep 300"))
        monkeypatch.setenv("SLURM_CONF", str(broken))
        outcome = await runner.wait(handle)
        with pytest.raises(RunnerError, match="controller does not answer"):
            await cluster.runner().open()
        monkeypatch.delenv("SLURM_CONF")
        await runner.aclose()
        return handle, outcome

    handle, outcome = run(main)
    assert outcome.status == AttemptStatus.ERROR
    assert outcome.error.startswith("Slurm did not answer for 1s: squeue did not answer within 1s")
    assert outcome.error.endswith("could not cancel it: it may still run")  # scancel could not reach it either
    assert squeue_state(handle.job_id) in ("PENDING", "RUNNING")
    subprocess.run(["scancel", handle.job_id], check=True, timeout=30)
    while squeue_state(handle.job_id) in ACTIVE_STATES:
        time.sleep(0.1)


def test_sbatch_refusing_a_job_is_a_runner_error(cluster: Cluster) -> None:
    runner = cluster.runner(partition="no_such_partition")

    async def main() -> None:
        with pytest.raises(RunnerError, match=r"sbatch refused the job: .*invalid partition"):
            await runner.start(cluster.spec("nowhere", "true"))
        with pytest.raises(RunnerError, match="image 'nope' has no command"):
            await runner.start(cluster.spec("nowhere", "true", image="nope"))
        await runner.aclose()

    run(main)


@pytest.mark.parametrize("args", [["--time=5"], ["-p", "debug"], ["--gres=gpu:1\n#SBATCH --time=1"], ["debug"],
                                  ["--container=/bundle"], ["--export=ALL"]])
def test_extra_sbatch_args_that_would_change_the_attempt_are_refused(args: list[str]) -> None:
    with pytest.raises(ValidationError, match="extra_sbatch_args"):
        SlurmSettings(extra_sbatch_args=args)  # type: ignore[arg-type]


def test_bad_settings_are_refused_and_the_schema_documents_them() -> None:
    for bad in ({"poll_interval": 0}, {"partition": "a b"}, {"on_orchestrator_loss": "ignore"}, {"nodes": 3}):
        with pytest.raises(ValidationError):
            SlurmSettings(**bad)
    assert SlurmSettings(extra_sbatch_args=["--gres=gpu:1", "--exclusive"]).extra_sbatch_args == (
        "--gres=gpu:1", "--exclusive")
    schema = SlurmSettings.model_json_schema()
    assert schema["additionalProperties"] is False
    assert all(field.get("description") for field in schema["properties"].values())


@pytest.mark.parametrize(("state", "status", "exit_file", "cancelled", "log", "expected"), [
    ("COMPLETED", 0, 0, False, "", (AttemptStatus.DONE, 0)),
    ("FAILED", 768, 3, False, "", (AttemptStatus.FAILED, 3)),
    ("FAILED", 768, None, False, "", (AttemptStatus.FAILED, 3)),
    ("TIMEOUT", 15, None, False, "", (AttemptStatus.TIMEOUT, 143)),  # as `scontrol` showed: ExitCode=0:15
    ("CANCELLED", 0, None, False, "", (AttemptStatus.CANCELLED, None)),
    ("FAILED", 15, None, True, "", (AttemptStatus.CANCELLED, 143)),
    ("OUT_OF_MEMORY", 9, None, False, "", (AttemptStatus.FAILED, 137)),
    ("FAILED", 9, None, False, "error: Exceeded job memory limit", (AttemptStatus.FAILED, 137)),
    ("FAILED", 9, None, False, "", (AttemptStatus.FAILED, 137)),
    ("FAILED", 0, None, False, "", (AttemptStatus.ERROR, 0)),
    ("NODE_FAIL", 0, None, False, "", (AttemptStatus.ERROR, 0)),
    ("PREEMPTED", 0, None, False, "", (AttemptStatus.ERROR, 0)),
    ("BOOT_FAIL", 0, None, False, "", (AttemptStatus.ERROR, 0)),
    ("DEADLINE", 0, None, False, "", (AttemptStatus.ERROR, 0)),
])
def test_slurm_states_map_to_attempt_outcomes(state: str, status: int, exit_file: int | None, cancelled: bool,
                                              log: str, expected: tuple[AttemptStatus, int | None]) -> None:
    """Slurm's TIMEOUT needs a job to outlive `--time` (a minute at least, ~66 s here): the mapping is
    checked on the state and wait status squeue reported for such a job on this cluster."""
    outcome = outcome_of(SlurmJob("42", state, "Reason", status, "jobgraph:r/t/1"), exit_file, cancelled, log)
    assert (outcome.status, outcome.exit_code) == expected
    assert outcome.status == AttemptStatus.DONE or outcome.error


@pytest.mark.parametrize(("state", "log", "cause"), [
    ("OUT_OF_MEMORY", "", Cause.OOM), ("FAILED", "error: Exceeded job memory limit", Cause.OOM),
    ("NODE_FAIL", "", Cause.LOST), ("PREEMPTED", "", Cause.LOST), ("BOOT_FAIL", "", Cause.LOST),
    ("DEADLINE", "", None), ("FAILED", "", None),
])
def test_slurm_ends_say_oom_and_lost_for_retry_rules(state: str, log: str, cause: Cause | None) -> None:
    outcome = outcome_of(SlurmJob("42", state, "Reason", 9, "jobgraph:r/t/1"), None, False, log)
    assert outcome.cause == cause


def test_a_job_sbatch_took_but_whose_answer_was_lost_is_found_by_its_comment_not_submitted_again(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch submits, then hangs past the runner's timeout (a wrapper on PATH): the answer is lost."""
    wrappers = cluster.tmp_path / "bin"
    wrappers.mkdir()
    (wrappers / "sbatch").write_text(f'#!/bin/sh\n{shutil.which("sbatch")} "$@"\ncode=$?\nsleep 5\nexit $code\n')
    (wrappers / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    runner = cluster.runner(controller_timeout=2.0)
    ledger = cluster.tmp_path / "ledger"

    async def main() -> Any:
        handle = await runner.start(cluster.spec("once", f"echo $SLURM_JOB_ID >> {ledger}"))
        outcome = await runner.wait(handle)
        await runner.aclose()
        return handle, outcome

    handle, outcome = run(main)
    assert outcome.status == AttemptStatus.DONE
    assert ledger.read_text().split() == [handle.job_id]  # it ran once, and it is the job that was watched


def test_a_job_cannot_forge_its_exit_code_while_slurm_knows_it(cluster: Cluster) -> None:
    """The job writes "<its id> 0" where the batch script writes its exit code, then kills that script."""
    runner = cluster.runner()
    folder = 'cd "$(dirname "$JOBGRAPH_RETURN_VALUE_FILE")"'
    forge = f'{folder}; echo "$SLURM_JOB_ID 0" > {EXIT_CODE_FILE}; kill -9 $PPID'

    async def main() -> Any:
        handle = await cluster.start(runner, cluster.spec("forger", forge))
        outcome = await runner.wait(handle)
        await runner.aclose()
        return outcome

    outcome = run(main)
    assert outcome.status == AttemptStatus.FAILED and outcome.exit_code != 0, outcome
