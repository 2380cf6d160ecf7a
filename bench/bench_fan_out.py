"""What a `for_each` copy costs, beside the same jobs written out one by one and beside `make -j2`.

One root job, then N no-op jobs after it, two at a time, three ways in one command: `make -j2` (N phony
targets after the root), `jobgraph run` of N plain jobs after the root, and `jobgraph run` of one job
whose `for_each` is a literal list of N items (each copy recorded as its own job, with its item). Each
from a cold process start in a fresh folder (no store yet), best of N after a warm-up.

    .venv/bin/python bench/bench_fan_out.py [--items 500] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import Bench, bytecode_as_installed, machine
from workloads import write_makefile, write_pipeline

POOL = 2
COMMAND = ["true"]


def fanned_pipeline(folder: Path, items: int) -> Path:
    """root, then one job that runs once per item of a literal list."""
    document = {
        "name": "bench", "images": {"cmd": COMMAND}, "defaults": {"pool_size": POOL},
        "jobs": [{"name": "root", "image": "cmd"},
                 {"name": "each", "image": "cmd", "args": ["{{ item }}"], "after": ["root"],
                  "for_each": list(range(items)), "max_fan_out": max(items, 1)}],
    }
    path = folder / "fanned.json"
    path.write_text(json.dumps(document))
    return path


def prepared(root: Path, items: int) -> Path:
    """A fresh folder with the three forms of the same work."""
    folder = Path(tempfile.mkdtemp(prefix="fan-out-", dir=root))
    dag = [("root", [])] + [(f"each_{i}", ["root"]) for i in range(items)]
    write_makefile(folder, dag, " ".join(COMMAND))
    write_pipeline(folder, dag, COMMAND, POOL)
    fanned_pipeline(folder, items)
    return folder


def main() -> None:
    """Print one table: seconds per tool, and each jobgraph form's cost per job above make."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    bytecode_as_installed()
    with tempfile.TemporaryDirectory(prefix="jobgraph-bench-fan-out-") as temporary:
        root = Path(temporary)
        bench = Bench(options.repeat, False, "thread", root)
        folder = prepared(root, options.items)

        def fresh() -> Path:
            return prepared(root, options.items)

        make = bench.time(["make", f"-j{POOL}", "-s", "all"], folder, fresh)
        plain = bench.time([*bench.jobgraph(), "run", "bench.json"], folder, fresh)
        fanned = bench.time([*bench.jobgraph(), "run", "fanned.json"], folder, fresh)
    jobs = options.items + 1
    print(f"{machine()}; {bench.statistic}; 1 root + {options.items} no-op jobs, 2 at a time")
    print("| measure | seconds | per job above make |")
    print("|---|---|---|")
    print(f"| make -j2 | {make:.3f} | - |")
    print(f"| jobgraph, {options.items} plain jobs | {plain:.3f} | {(plain - make) / jobs * 1000:.2f} ms |")
    print(f"| jobgraph, one job with for_each over {options.items} items | {fanned:.3f} | "
          f"{(fanned - make) / jobs * 1000:.2f} ms |")


if __name__ == "__main__":
    main()
