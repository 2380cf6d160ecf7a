"""Benchmark: 40 container jobs of `sh -c true`, 2 at a time: jobgraph's container runner vs xargs -P2 podman run.

Both run the same jobs in the same busybox test image (`bash scripts/build-images.sh`), with the
engine's default network and with `--network none`. jobgraph runs cold (it starts, and stops, its own
Podman API service: counted) and warm (DOCKER_HOST points at a service already running, as Docker's
daemon always is). The cases alternate within each round, so a busy machine slows them alike; the
table shows the median of the rounds, and the CPU time each side used (from /proc, the service's
included): on a 2-core machine both sides are CPU-bound, and the CPU is the steadier figure.

Run: .venv/bin/python bench/bench_containers.py [--jobs 40] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jobgraph.runners.service import EngineService, start_podman_service

IMAGE = "localhost/jobgraph-test:latest"
CGROUP = Path("/sys/fs/cgroup/cpuacct")
"""cgroup v1 CPU accounting: a case's own processes, and Podman's conmon and containers (libpod_parent)."""


@dataclass
class Sample:
    wall: float
    cpu: float | None


def cpu_seconds(pid: int) -> float:
    """User + system time of a process and of the children it waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def cgroup_usage(path: Path) -> float:
    return int((path / "cpuacct.usage").read_text()) / 1e9


def timed(command: list[str], cwd: Path, env: dict[str, str], service: EngineService | None) -> Sample:
    """Wall time, and CPU time of the command's processes, Podman's conmon and containers, and the service."""
    group = CGROUP / f"jobgraph-bench-{os.getpid()}"
    accounted = (CGROUP / "libpod_parent").is_dir() and os.access(CGROUP, os.W_OK)
    if accounted:
        group.mkdir(exist_ok=True)
        command = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", *command]
    podman_before = cgroup_usage(CGROUP / "libpod_parent") if accounted else 0.0
    service_before = cpu_seconds(service.process.pid) if service and service.process else 0.0
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if not accounted:
        return Sample(wall, None)
    cpu = cgroup_usage(group) + cgroup_usage(CGROUP / "libpod_parent") - podman_before
    if service and service.process:
        cpu += cpu_seconds(service.process.pid) - service_before
    time.sleep(0.2)  # the group empties once its last process is reaped
    group.rmdir()
    return Sample(wall, cpu)


def median(samples: list[Sample]) -> tuple[float, float | None]:
    cpus = [s.cpu for s in samples if s.cpu is not None]
    return statistics.median(s.wall for s in samples), statistics.median(cpus) if cpus else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    version = subprocess.run(["podman", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"{args.jobs} jobs of `sh -c true` in {IMAGE}, 2 at a time; median of {args.repeat} rounds")
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, {version}, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        warm_service = start_podman_service(folder / "warm" / "podman.sock")
        try:
            for network in ("bridge", "none"):
                pipeline = folder / f"bench-{network}.json"
                pipeline.write_text(json.dumps({
                    "name": "bench", "defaults": {"runner": "podman", "pool_size": 2, "network": network},
                    "jobs": [{"name": f"j{i}", "image": IMAGE, "args": ["sh", "-c", "true"]} for i in range(args.jobs)],
                }))
                flag = [] if network == "bridge" else ["--network", "none"]
                numbers = " ".join(str(i) for i in range(args.jobs))
                xargs = ["sh", "-c", f'printf "%s\\n" {numbers} | xargs -P2 -I{{}} "$@"', "sh",
                         "podman", "run", "--rm", *flag, IMAGE, "sh", "-c", "true"]
                run_env = {**env, "JOBGRAPH_HOME": str(folder / ".jobgraph")}
                jobgraph = [sys.executable, "-m", "jobgraph", "run", str(pipeline)]
                warm_env = {**run_env, "DOCKER_HOST": warm_service.base_url}
                samples: dict[str, list[Sample]] = {"xargs": [], "cold": [], "warm": []}
                for _ in range(args.repeat):
                    samples["xargs"].append(timed(xargs, folder, env, None))
                    samples["cold"].append(timed(jobgraph, folder, run_env, None))
                    samples["warm"].append(timed(jobgraph, folder, warm_env, warm_service))
                rows.append((network, {name: median(case) for name, case in samples.items()}))
        finally:
            warm_service.stop()
    print()
    print("| network | xargs -P2 podman run --rm | jobgraph, starting its own API service | "
          "jobgraph, API service already running |")
    print("|---|---|---|---|")
    for network, result in rows:
        base_wall, base_cpu = result["xargs"]
        cells = [f"{base_wall:.2f} s" + (f" (CPU {base_cpu:.2f} s)" if base_cpu is not None else "")]
        for name in ("cold", "warm"):
            wall, cpu = result[name]
            cell = f"{wall:.2f} s ({wall / base_wall:.2f}x)"
            if cpu is not None and base_cpu:
                cell += f", CPU {cpu:.2f} s ({cpu / base_cpu:.2f}x)"
            cells.append(cell)
        label = "bridge (engine default)" if network == "bridge" else network
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
