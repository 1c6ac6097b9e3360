"""What an attached objective costs a distiller: seconds per iteration and peak memory.

Runs ``BASE`` and ``BASE+OBJ`` alternately (A B A B ...), each distillation in a fresh
``ddbench run`` process (peak memory is per process), and prints the medians and their
ratio. Alternating keeps the comparison fair on a noisy machine.

    python benchmarks/objective_cost.py --base dm --objective mim --dataset mnist --ipc 10 \
        --iterations 20 --repeats 3 --data-root /path/to/data
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def one(method: str, args, store: Path, seed: int, extra: list[str]) -> tuple[float, float]:
    base = method.split("+")[0]
    cmd = [sys.executable, "-m", "ddbench", "run", "--methods", method, "--datasets", args.dataset,
           "--ipc", str(args.ipc), "--seeds", str(seed), "--store", str(store), "--quiet",
           "--set", f"{base}.iterations={args.iterations}", "--set", "eval.epochs=0",
           "--set", "eval.num_eval=1", "--device", args.device, *extra]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    db = sqlite3.connect(store)
    row = db.execute("SELECT seconds_per_iter, peak_mem_mb FROM synsets WHERE method=? AND seed=?",
                     (method, seed)).fetchone()
    db.close()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="dm")
    ap.add_argument("--objective", default="mim")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--set", action="append", default=[], help="extra --set, e.g. mtt.syn_steps=10")
    args = ap.parse_args()
    extra = [x for s in args.set for x in ("--set", s)]
    methods = [args.base, f"{args.base}+{args.objective}"]
    got: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for m in methods:
                got[m].append(one(m, args, Path(tmp) / f"{r}.sqlite", r, extra))
    s = {m: statistics.median(v[0] for v in got[m]) for m in methods}
    mem = {m: statistics.median(v[1] for v in got[m]) for m in methods}
    print(f"{args.dataset} ipc {args.ipc}, {args.iterations} iterations, {args.repeats} alternating repeats")
    for m in methods:
        print(f"  {m:<14} {s[m]:.3f} s/iter  {mem[m]:.0f} MB peak   (runs: "
              + ", ".join(f"{a:.3f}" for a, _ in got[m]) + ")")
    a, b = methods
    print(f"  ratio {b} / {a}: {s[b] / s[a]:.2f}x time, {mem[b] / mem[a]:.2f}x peak memory "
          f"(+{s[b] - s[a]:.3f} s/iter, +{mem[b] - mem[a]:.0f} MB)")


if __name__ == "__main__":
    main()
