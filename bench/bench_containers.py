"""Benchmark: 40 container jobs of `sh -c true`, 2 at a time: jobgraph's container runner vs xargs -P2 podman run.

Both run the same jobs in the same busybox test image (`bash scripts/build-images.sh`), from a cold
start: jobgraph starts (and stops) its own Podman API service when none is running, and that is
counted; the warm case points DOCKER_HOST at an API service that is already running, as Docker's
daemon always is. Each case runs with the engine's default network and with `--network none`, the same for both.

Run: .venv/bin/python bench/bench_containers.py [--jobs 40] [--repeat 3]
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

from jobgraph.runners.service import start_podman_service

IMAGE = "localhost/jobgraph-test:latest"


def timed(command: list[str], cwd: Path, env: dict[str, str], stdin: str | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, input=stdin, text=True, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    print(f"{args.jobs} jobs of `sh -c true` in {IMAGE}, 2 at a time; best of {args.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for network in ("bridge", "none"):
            pipeline = folder / f"bench-{network}.json"
            pipeline.write_text(json.dumps({
                "name": "bench", "defaults": {"runner": "podman", "pool_size": 2, "network": network},
                "jobs": [{"name": f"j{i}", "image": IMAGE, "args": ["sh", "-c", "true"]} for i in range(args.jobs)],
            }))
            flag = [] if network == "bridge" else ["--network", "none"]
            xargs = ["xargs", "-P2", "-I{}", "podman", "run", "--rm", *flag, IMAGE, "sh", "-c", "true"]
            lines = "\n".join(str(i) for i in range(args.jobs)) + "\n"
            baseline = min(timed(xargs, folder, env, lines) for _ in range(args.repeat))
            run_env = {**env, "JOBGRAPH_HOME": str(folder / ".jobgraph")}
            command = [sys.executable, "-m", "jobgraph", "run", str(pipeline)]
            cold = min(timed(command, folder, run_env) for _ in range(args.repeat))
            service = start_podman_service(folder / "warm" / "podman.sock")
            try:
                warm = min(timed(command, folder, {**run_env, "DOCKER_HOST": service.base_url})
                           for _ in range(args.repeat))
            finally:
                service.stop()
            print(f"  network {network:6}  xargs -P2 podman run --rm: {baseline:6.2f} s   "
                  f"jobgraph run, starting its own API service: {cold:6.2f} s (ratio {cold / baseline:.2f})   "
                  f"with the service already running: {warm:6.2f} s (ratio {warm / baseline:.2f})")


if __name__ == "__main__":
    main()
