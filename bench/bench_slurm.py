"""Benchmark: N `true` jobs through the Slurm runner and through `jobgraph run`, against a plain loop of
`sbatch --wait` calls.

Both keep the same number of jobs in flight (a semaphore for the runner, as a pool would; that many
threads each running `sbatch --wait` one after another for the loop). The runner is timed at several
poll intervals, and the `squeue` calls it made are counted (a wrapper on PATH), so the cost to the
controller is shown beside the speed. Needs the cluster of scripts/setup-slurm.sh.

Run: .venv/bin/python bench/bench_slurm.py [--jobs 200] [--parallel 2] [--poll 2.0 0.5 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jobgraph.runners.base import JobSpec
from jobgraph.runners.slurm import SlurmRunner
from jobgraph.runners.slurm_batch import SlurmSettings
from jobgraph.states import AttemptStatus


async def through_runner(folder: Path, jobs: int, parallel: int, poll: float) -> float:
    """Seconds for `jobs` attempts of `true`, `parallel` at a time, through SlurmRunner."""
    runner = SlurmRunner({"true": ["true"]}, SlurmSettings(poll_interval=poll), folder, cwd=folder)
    await runner.open()
    slots = asyncio.Semaphore(parallel)
    run_id = f"bench{time.time_ns()}"

    async def one(index: int) -> AttemptStatus:
        spec = JobSpec(run_id, "bench", f"j{index}", 1, "true", (), {}, folder / "logs" / f"j{index}.log")
        async with slots:
            return (await runner.wait(await runner.start(spec))).status

    began = time.perf_counter()
    statuses = await asyncio.gather(*(one(i) for i in range(jobs)))
    took = time.perf_counter() - began
    await runner.aclose()
    assert set(statuses) == {AttemptStatus.DONE}, statuses
    return took


def sbatch_wait_loop(folder: Path, jobs: int, parallel: int) -> float:
    """Seconds for `jobs` plain `sbatch --wait --wrap true` calls, `parallel` at a time."""
    def one(_: int) -> None:
        subprocess.run(["sbatch", "--wait", "--quiet", "--output=/dev/null", f"--chdir={folder}", "--wrap", "true"],
                       check=True, stdout=subprocess.DEVNULL)

    began = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(jobs)))
    return time.perf_counter() - began


def through_jobgraph(folder: Path, jobs: int, parallel: int, poll: float) -> float:
    """Seconds for `jobgraph run` of a pipeline of `jobs` independent `true` jobs on Slurm, pool of `parallel`,
    start-up, the store's records and the summary included."""
    pipeline = {"name": "bench", "images": {"true": ["true"]}, "runners": {"slurm": {"poll_interval": poll}},
                "pools": {"slots": {"max_parallel": parallel}},
                "jobs": [{"name": f"j{i}", "image": "true", "runner": "slurm", "pool": "slots"} for i in range(jobs)]}
    path = folder / f"bench-{poll}.json"
    path.write_text(json.dumps(pipeline))
    env = {**os.environ, "JOBGRAPH_HOME": str(folder / f"home-{poll}")}
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jobgraph", "run", str(path)], cwd=folder, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--poll", type=float, nargs="+", default=[2.0, 0.5, 0.2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wrappers, calls = folder / "bin", folder / "squeue-calls"
        wrappers.mkdir()
        (wrappers / "squeue").write_text(f'#!/bin/sh\necho >> {calls}\nexec {shutil.which("squeue")} "$@"\n')
        (wrappers / "squeue").chmod(0o755)
        os.environ["PATH"] = f"{wrappers}:{os.environ['PATH']}"
        print(f"{args.jobs} `true` jobs, {args.parallel} in flight, on {subprocess.getoutput('sinfo -h -N -o %N')}")
        loop = sbatch_wait_loop(folder, args.jobs, args.parallel)
        print(f"  sbatch --wait loop          {loop:7.1f} s   {loop / args.jobs * 1000:6.0f} ms/job")
        for poll in args.poll:
            calls.write_text("")
            ours = asyncio.run(through_runner(folder, args.jobs, args.parallel, poll))
            polls = len(calls.read_text().splitlines())
            print(f"  SlurmRunner, poll {poll:4.1f} s   {ours:7.1f} s   {ours / args.jobs * 1000:6.0f} ms/job   "
                  f"(ratio {ours / loop:.2f}x; {polls} squeue calls)")
            calls.write_text("")
            cli = through_jobgraph(folder, args.jobs, args.parallel, poll)
            polls = len(calls.read_text().splitlines())
            print(f"  jobgraph run, poll {poll:4.1f} s  {cli:7.1f} s   {cli / args.jobs * 1000:6.0f} ms/job   "
                  f"(ratio {cli / loop:.2f}x; {polls} squeue calls)")


if __name__ == "__main__":
    main()
