"""One small sweep through each executor, side by side: local, local --jobs N, ray.

Every variant is a fresh ``ddbench run`` process on a fresh store (so start-up, worker
spawning and Ray's start are part of its time), run one after another. Prints the wall
time of the command, the summed CPU seconds and wall seconds the cells recorded, and
whether every accuracy equals the local executor's.

    python benchmarks/executors.py --methods random,dm --ipc 1,10 --seeds 0,1,2,3 \
        --iterations 20 --epochs 50 --jobs 2
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate


def run(args, store: Path, extra: list[str]) -> tuple[float, dict, float, float]:
    base = [m.split("+")[0] for m in args.methods.split(",")]
    sets = [x for b in base if b not in ("random", "full") for x in ("--set", f"{b}.iterations={args.iterations}")]
    cmd = [sys.executable, "-m", "ddbench", "run", "--methods", args.methods, "--datasets", args.dataset,
           "--ipc", args.ipc, "--seeds", args.seeds, "--store", str(store), "--quiet", "--device", "cpu",
           "--set", f"eval.epochs={args.epochs}", "--set", "eval.num_eval=1", *sets, *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr}")
    db = sqlite3.connect(store)
    acc = {r[0]: r[1] for r in db.execute("SELECT cell_key, accuracy FROM results WHERE status='ok'")}
    cells = db.execute("SELECT SUM(seconds), SUM(cpu_seconds) FROM results").fetchone()
    sets_ = db.execute("SELECT COALESCE(SUM(seconds), 0), COALESCE(SUM(cpu_seconds), 0) FROM synsets").fetchone()
    db.close()
    return took, acc, cells[0] + sets_[0], cells[1] + sets_[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="random,dm")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--ipc", default="1,10")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    variants = [("local", []), (f"local --jobs {args.jobs}", ["--jobs", str(args.jobs)])]
    if importlib.util.find_spec("ray") is not None:
        variants.append((f"ray (local instance, --jobs {args.jobs})",
                         ["--executor", "ray", "--jobs", str(args.jobs)]))
    else:
        print("ray is not installed: skipping it (pip install 'ddbench[ray]')", file=sys.stderr)
    table, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(variants):
            took, acc, work, cpu = run(args, Path(tmp) / f"{i}" / "r.sqlite", extra)
            reference = acc if reference is None else reference
            same = "yes" if acc == reference else f"NO ({sum(acc.get(k) != v for k, v in reference.items())} differ)"
            table.append([name, f"{took:.1f}", f"{work:.1f}", f"{cpu:.1f}", len(acc), same])
    print(f"{args.methods} on {args.dataset}, ipc {args.ipc}, seeds {args.seeds}, {args.iterations} "
          f"iterations, {args.epochs} eval epochs; {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(tabulate(table, headers=["executor", "wall s (command)", "cell wall s (sum)", "cell CPU s (sum)",
                                   "cells", "accuracies = local"], disable_numparse=True))


if __name__ == "__main__":
    main()
