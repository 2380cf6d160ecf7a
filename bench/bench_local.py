"""Benchmark: jobgraph's overhead per process job against `make -j2` on the same DAG, and validate speed.

The DAG is the one the core issue names: a 400-way fan-out plus a 100-long chain of no-op jobs (`true`),
pool of 2. Both tools run it from a cold start (process start-up included), several times; the best
time of each is compared. Then `jobgraph validate` of generated 10,000-job files (seed JSON and YAML).

Run: .venv/bin/python bench/bench_local.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

FAN_OUT, CHAIN = 400, 100


def edges() -> list[tuple[str, list[str]]]:
    """fan_root -> fan_0..fan_399, and chain_0 -> chain_1 -> ... -> chain_99."""
    dag: list[tuple[str, list[str]]] = [("fan_root", [])]
    dag += [(f"fan_{i}", ["fan_root"]) for i in range(FAN_OUT)]
    dag += [(f"chain_{i}", [f"chain_{i - 1}"] if i else []) for i in range(CHAIN)]
    return dag


def write_makefile(folder: Path) -> Path:
    lines = [".PHONY: all " + " ".join(n for n, _ in edges()), "all: " + " ".join(n for n, _ in edges())]
    for name, after in edges():
        lines += [f"{name}: {' '.join(after)}", "\ttrue"]
    path = folder / "Makefile"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_pipeline(folder: Path) -> Path:
    document = {
        "name": "bench", "images": {"noop": ["true"]}, "defaults": {"pool_size": 2},
        "jobs": [{"name": n, "image": "noop", "after": a} for n, a in edges()],
    }
    path = folder / "bench.json"
    path.write_text(json.dumps(document))
    return path


def timed(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def best(repeat: int, command: list[str], cwd: Path, env: dict[str, str] | None = None,
         before: object = None) -> float:
    times = []
    for _ in range(repeat):
        if callable(before):
            before()
        times.append(timed(command, cwd, env))
    return min(times)


def generated(folder: Path, jobs: int) -> tuple[Path, Path]:
    """A seed-form JSON array and a native YAML file, each of `jobs` jobs, ten-wide layers."""
    seed = [{"task_name": f"t_{i}", "image_name": "img", "compute_pool_name": "POOL", "job_name": f"j_{i}",
             "table_name": f"results_{i}", "retry_count": i % 3,
             "after_task_name": "root_task" if i < 10 else f"t_{i - 10},t_{i - 7 - (i % 3)}"} for i in range(jobs)]
    seed_path = folder / "big.json"
    seed_path.write_text(json.dumps(seed))
    native = {"name": "big", "images": {"img": ["true"]},
              "jobs": [{"name": s["task_name"], "image": "img", "after": s["after_task_name"].split(",")
                        if i >= 10 else [], "retries": s["retry_count"]} for i, s in enumerate(seed)]}
    yaml_path = folder / "big.yaml"
    yaml_path.write_text(yaml.safe_dump(native))
    return seed_path, yaml_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    jobgraph = [sys.executable, "-m", "jobgraph"]
    jobs = len(edges())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_makefile(folder)
        pipeline = write_pipeline(folder)
        env = {**os.environ, "JOBGRAPH_HOME": str(folder / ".jobgraph")}
        make = best(args.repeat, ["make", "-j2", "-s", "all"], folder)
        ours = best(args.repeat, [*jobgraph, "run", str(pipeline)], folder, env)
        startup = best(args.repeat, [*jobgraph, "--help"], folder, env)
        print(f"DAG: {FAN_OUT}-way fan-out + {CHAIN}-long chain = {jobs} no-op jobs, 2 at a time, "
              f"best of {args.repeat}")
        print(f"  make -j2        {make:7.3f} s")
        print(f"  jobgraph run    {ours:7.3f} s   (ratio {ours / make:.2f}x; `jobgraph --help` alone: {startup:.3f} s)")
        print(f"  overhead per job above make, start-up included: {(ours - make) / jobs * 1000:.2f} ms")

        for size in (10_000,):
            seed_path, yaml_path = generated(folder, size)
            for path in (seed_path, yaml_path):
                took = best(args.repeat, [*jobgraph, "validate", str(path), "--runner", "podman"], folder, env)
                print(f"  jobgraph validate {path.name} ({size} jobs): {took:.3f} s")


if __name__ == "__main__":
    main()
