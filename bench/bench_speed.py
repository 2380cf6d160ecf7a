"""Benchmark: jobgraph beside `make -j2` and doit on the same DAGs, with the speed issue's goals, in one table.

Cases (every timing is a whole command from a cold process start, start-up included):
  - 501 no-op jobs (`true`; a 400-way fan-out beside a 100-long chain), 2 at a time, existing store;
  - a chain of 40 `true` in a fresh folder (jobgraph creates its store, doit its database);
  - the seed's graph (examples/seed/jobconfig.json's shape) with `sleep 1` jobs, pool of 2: the
    makespan against the optimum of 4 s, and, from the store's records, where jobgraph's extra time goes;
  - start-up: `jobgraph --help` beside `doit --help` and `python -c pass`;
  - `jobgraph validate` of a 10,000-job seed JSON and native YAML;
  - the peak memory (max RSS of the jobgraph process) of a 10,000-job run, against a 1,000-job run.

doit runs from its own virtual environment (bench/.venv-peers, made on first use with `pip install
doit`), with `-n 2 -P thread`: doit's default parallel type, `process`, forks worker processes that
take tasks from a queue, which costs more per task here; `--doit-parallel process` measures it.
Each doit task is a shell string (`/bin/sh -c true`), as doit's docs write them; make execs simple
commands without a shell, as jobgraph does.

Run: .venv/bin/python bench/bench_speed.py [--repeat N] [--median] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from makespan import breakdown
from workloads import (
    SEED_EDGES,
    Dag,
    chain,
    fan_and_chain,
    layers,
    write_dodo,
    write_makefile,
    write_pipeline,
    write_seed_pipeline,
    write_validate_inputs,
)

HERE = Path(__file__).resolve().parent
PEERS = HERE / ".venv-peers"
POOL = 2


@dataclass
class Row:
    """One line of the table."""

    measure: str
    make: str
    doit: str
    jobgraph: str
    ratio: str
    goal: str
    met: bool | None


@dataclass
class Bench:
    """How each command is timed: best or median of `repeat` runs, after one untimed warm-up."""

    repeat: int
    median: bool
    doit_parallel: str
    root: Path

    @property
    def statistic(self) -> str:
        return f"median of {self.repeat}" if self.median else f"best of {self.repeat}"

    def jobgraph(self) -> list[str]:
        script = Path(sys.executable).parent / "jobgraph"
        return [str(script)] if script.exists() else [sys.executable, "-m", "jobgraph"]

    def doit(self, *args: str) -> list[str]:
        return [str(PEERS / "bin" / "doit"), *args]

    def env(self, folder: Path) -> dict[str, str]:
        env = {**os.environ, "JOBGRAPH_HOME": str(folder / ".jobgraph")}
        env.pop("JOBGRAPH_STORE", None)
        return env

    def time(self, command: list[str], folder: Path, fresh: Callable[[], Path] | None = None,
             warm_up: bool = True) -> float:
        """Seconds one command takes; with `fresh`, each run in a new folder that `fresh` prepares."""
        times = []
        for run in range(self.repeat + (1 if warm_up else 0)):
            cwd = fresh() if fresh else folder
            took = measured(command, cwd, self.env(cwd))
            if run or not warm_up:
                times.append(took)
        return statistics.median(times) if self.median else min(times)


def measured(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Seconds one command takes; it must succeed; its output is dropped."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    took = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}) in {cwd}:\n"
                         f"{result.stderr.decode()[-2000:]}")
    return took


LAUNCHER = """import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status))
"""
"""Starts a command from a small, fresh process: Linux counts in a process's peak RSS the memory of the
process it was forked from (until its exec), so a command started straight from this benchmark, grown
by the files it generated, would seem to need as much as the benchmark."""


def peak_memory(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    """(seconds, the command's own peak RSS in bytes)."""
    report = cwd / "peak-rss"
    executable = shutil.which(command[0]) or command[0]
    took = measured([sys.executable, "-c", LAUNCHER, str(report), executable, *command[1:]], cwd, env)
    return took, int(report.read_text())


def peers_ready() -> None:
    """doit in the bench's own virtual environment, never in jobgraph's dependencies."""
    if (PEERS / "bin" / "doit").exists():
        return
    print(f"installing doit into {PEERS} ...", file=sys.stderr)
    subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(PEERS)], check=True)
    subprocess.run([str(PEERS / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "doit"],
                   check=True)


def folder_for(root: Path, name: str, dag: Dag, command: str, pool: int = POOL) -> Path:
    """A folder holding the same DAG for the three tools."""
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    write_makefile(folder, dag, command)
    write_dodo(folder, dag, command)
    write_pipeline(folder, dag, command.split(), pool)
    return folder


def three_tools(bench: Bench, name: str, dag: Dag, command: str, fresh: bool) -> tuple[float, float, float]:
    """(make, doit, jobgraph) seconds for one DAG; `fresh` runs each in a new folder (no store, no .doit.db)."""
    folder = folder_for(bench.root, name, dag, command)
    maker = (lambda: folder_for(bench.root, name, dag, command)) if fresh else None
    make = bench.time(["make", f"-j{POOL}", "-s", "all"], folder, maker)
    doit = bench.time(bench.doit("-n", str(POOL), "-P", bench.doit_parallel), folder, maker)
    ours = bench.time([*bench.jobgraph(), "run", "bench.json"], folder, maker)
    return make, doit, ours


def per_job(seconds: float, baseline: float, jobs: int) -> str:
    return f"{(seconds - baseline) / jobs * 1000:.2f} ms"


def dag_rows(bench: Bench) -> list[Row]:
    """The 501-job DAG (existing store) and the 40-chain (fresh folder)."""
    rows = []
    dag = fan_and_chain()
    make, doit, ours = three_tools(bench, "fan", dag, "true", fresh=False)
    over = (ours - make) / len(dag) * 1000
    rows.append(Row(f"{len(dag)} no-op jobs (400 fan-out + 100 chain), pool 2, start-up included", f"{make:.3f} s",
                    f"{doit:.3f} s", f"{ours:.3f} s",
                    f"{over:.2f} ms/job above make ({ours / make:.1f}x); doit {per_job(doit, make, len(dag))}",
                    "<= 0.5 ms/job", over <= 0.5))
    dag = chain(40)
    make, doit, ours = three_tools(bench, "chain", dag, "true", fresh=True)
    rows.append(Row("chain of 40 `true`, fresh folder and store, start-up included", f"{make:.3f} s",
                    f"{doit:.3f} s", f"{ours:.3f} s",
                    f"{per_job(ours, make, 40)}/job above make; doit {per_job(doit, make, 40)}",
                    "<= 0.15 s", ours <= 0.15))
    return rows


def seed_rows(bench: Bench) -> tuple[list[Row], list[str]]:
    """The seed's graph of `sleep 1` jobs, pool 2: makespans against 4 s, and jobgraph's own time line."""
    folder = folder_for(bench.root, "seed", SEED_EDGES, "sleep 1")
    # The seed's jobs pass a query and a table to their image: a shell takes them as $1, $2 and ignores them.
    write_seed_pipeline(folder, ["sh", "-c", "exec sleep 1", "sh"], POOL)
    launched = time.time()  # this first run (it creates the store) is also jobgraph's warm-up
    took = measured([*bench.jobgraph(), "run", "pipeline.yaml"], folder, bench.env(folder))
    notes = breakdown(folder / ".jobgraph" / "jobgraph.db", SEED_EDGES, launched, launched + took, 4.0)
    make = bench.time(["make", f"-j{POOL}", "-s", "all"], folder, warm_up=False)
    doit = bench.time(bench.doit("-n", str(POOL), "-P", bench.doit_parallel), folder, warm_up=False)
    ours = bench.time([*bench.jobgraph(), "run", "pipeline.yaml"], folder, warm_up=False)
    row = Row("seed-shaped 6 x `sleep 1`, pool 2: makespan / optimum 4 s", f"{make / 4:.3f}x", f"{doit / 4:.3f}x",
              f"{ours / 4:.3f}x", f"{ours:.3f} s, {(ours - 4) * 1000:.0f} ms above the optimum",
              "<= 1.02x", ours / 4 <= 1.02)
    return [row], notes


def startup_rows(bench: Bench) -> list[Row]:
    folder = Path(tempfile.mkdtemp(prefix="startup-", dir=bench.root))
    python = bench.time([sys.executable, "-c", "pass"], folder)
    doit = bench.time(bench.doit("--help"), folder)
    ours = bench.time([*bench.jobgraph(), "--help"], folder)
    return [Row("start-up: `--help`", "-", f"{doit:.3f} s", f"{ours:.3f} s",
                f"python -c pass {python:.3f} s", "<= 0.10 s", ours <= 0.10)]


def validate_rows(bench: Bench, jobs: int) -> list[Row]:
    folder = Path(tempfile.mkdtemp(prefix="validate-", dir=bench.root))
    seed_path, yaml_path = write_validate_inputs(folder, jobs)
    rows = []
    for path, kind, goal in ((seed_path, "seed JSON", 0.25), (yaml_path, "native YAML", 0.8)):
        took = bench.time([*bench.jobgraph(), "validate", path.name, "--runner", "podman"], folder)
        rows.append(Row(f"`validate` of a {jobs:,}-job {kind}", "-", "-", f"{took:.3f} s",
                        f"{took / jobs * 1e6:.0f} µs/job", f"<= {goal} s", took <= goal))
    return rows


def memory_rows(bench: Bench, sizes: tuple[int, ...]) -> list[Row]:
    """Peak RSS of `jobgraph run` of `true` jobs in layers 100 wide, pool 2; each size once, in a fresh folder."""
    peaks: dict[int, tuple[float, int]] = {}
    for jobs in sizes:
        folder = folder_for(bench.root, f"big{jobs}", layers(jobs), "true")
        peaks[jobs] = peak_memory([*bench.jobgraph(), "run", "bench.json"], folder, bench.env(folder))
    largest = max(sizes)
    took, rss = peaks[largest]
    slope = ""
    if len(sizes) > 1:
        smallest = min(sizes)
        per_job_bytes = (rss - peaks[smallest][1]) / (largest - smallest)
        slope = f"{peaks[smallest][1] / 2**20:.0f} MB at {smallest:,} jobs: {per_job_bytes / 1024:.1f} kB/job; "
    return [Row(f"{largest:,}-job run (`true`, layers of 100, pool 2): peak RSS", "-", "-", f"{rss / 2**20:.0f} MB",
                f"{slope}run took {took:.1f} s", "<= 150 MB", rss <= 150 * 2**20)]


def table(rows: list[Row]) -> str:
    """A Markdown table, to paste into the README as it is."""
    lines = ["| measure | make -j2 | doit -n 2 | jobgraph | ratio / overhead | goal | met? |", "|---" * 7 + "|"]
    for row in rows:
        met = "-" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(f"| {row.measure} | {row.make} | {row.doit} | {row.jobgraph} | {row.ratio} | {row.goal} | {met} |")
    return "\n".join(lines)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, {platform.system()}"


def bytecode_as_installed() -> None:
    """Run every tool as a user's install runs it: with its modules' bytecode cached.

    pip compiles what it installs; an editable checkout caches bytecode at its first import, unless
    PYTHONDONTWRITEBYTECODE is set (as it is in some CI and sandbox shells), and then every command
    compiles jobgraph's modules from source again (~40 ms each). So the bench compiles them once and
    lets the tools cache their bytecode.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    source = Path(__file__).resolve().parent.parent / "src"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(source)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each timed command [default 5]")
    parser.add_argument("--median", action="store_true", help="report the median run instead of the best")
    parser.add_argument("--quick", action="store_true",
                        help="one timed run of each command (after its warm-up); the memory of the 10,000-job run only")
    parser.add_argument("--doit-parallel", choices=("thread", "process"), default="thread")
    parser.add_argument("--only", nargs="*", choices=("dags", "seed", "startup", "validate", "memory"),
                        help="run only these cases")
    args = parser.parse_args()
    peers_ready()
    bytecode_as_installed()
    repeat = 1 if args.quick else args.repeat
    cases = set(args.only or ("dags", "seed", "startup", "validate", "memory"))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="jobgraph-bench-") as tmp:
        bench = Bench(repeat, args.median, args.doit_parallel, Path(tmp))
        rows: list[Row] = []
        notes: list[str] = []
        if "dags" in cases:
            rows += dag_rows(bench)
        if "seed" in cases:
            seed, notes = seed_rows(bench)
            rows += seed
        if "startup" in cases:
            rows += startup_rows(bench)
        if "validate" in cases:
            rows += validate_rows(bench, 10_000)
        if "memory" in cases:
            rows += memory_rows(bench, (10_000,) if args.quick else (1_000, 10_000))
    load_after = os.getloadavg()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}; {bench.statistic} after a warm-up "
          f"(the seed case: {bench.statistic}, no warm-up); doit -n {POOL} -P {args.doit_parallel}; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print()
    print(table(rows))
    if notes:
        print()
        print("\n".join(notes))


if __name__ == "__main__":
    main()
