"""Seconds per outer iteration and peak memory of DM, DC and DSA, the plain network
(``fast=false``: the computation before the fast path) against the fast path, side by side.

Every measurement runs in a fresh interpreter (peak RSS is per process), on random data of
CIFAR-10's shape (50,000 + 10,000 images, 3x32x32, 10 classes: the work does not depend on
the pixels), with the allocator tuning of ``ddbench run``. A short run of the same method
(one outer step) warms the kernels up first; the median of the timed iterations is reported,
with the process CPU seconds per iteration beside it (a fairer number on a shared machine).
Old and new alternate, and swap order every repeat, so that load from other jobs hits both.

    python benchmarks/distill_speed.py --settings dm,dc-ipc1,dc-ipc10,dsa-ipc10 \
        --iterations 2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from itertools import pairwise

import torch

#: name -> (method, ipc, reference s/iteration, reference peak GB): the issue's figures for
#: the reference implementations on a 2-core CPU (float32, CIFAR-10, ConvNet-3, instance norm)
SETTINGS = {
    "dm": ("dm", 10, "1.8", "2.3"),
    "dc-ipc1": ("dc", 1, "4.6", "2.6"),
    "dc-ipc10": ("dc", 10, "142-144", "2.8"),
    "dsa-ipc10": ("dsa", 10, "142-144", "2.8"),
}


def random_cifar10_shape():
    from ddbench.data.bundle import DataBundle

    g = torch.Generator().manual_seed(0)
    return DataBundle("random-cifar10-shape", torch.randn(50_000, 3, 32, 32, generator=g),
                      torch.arange(50_000) % 10, torch.randn(10_000, 3, 32, 32, generator=g),
                      torch.arange(10_000) % 10, [str(c) for c in range(10)], (0.0,) * 3, (1.0,) * 3)


def distill(method: str, ipc: int, data, stamp, **params) -> None:
    from ddbench.components import DistillContext
    from ddbench.registry import load_registry

    registry = load_registry()
    cls = registry.get("distillers", method).cls
    model = registry.get("models", "convnet").cls
    ctx = DistillContext(data=data, ipc=ipc, seed=0, device=torch.device("cpu"), objectives=[],
                         build_model=lambda name: model(model.Params()).build(3, 10, (32, 32)),
                         progress=lambda step, total: stamp())
    cls(cls.Params(**{**cls.preset_values("paper", "cifar10", ipc), **params})).distill(ctx)


def worker(name: str, fast: bool, iterations: int) -> dict:
    """Time ``iterations`` outer iterations of one setting in this process."""
    from ddbench.allocator import tune_allocator

    tune_allocator()
    method, ipc, _, _ = SETTINGS[name]
    data = random_cifar10_shape()
    warm = {} if method == "dm" else {"outer_loop": 1, "inner_loop": 1}
    distill(method, ipc, data, lambda: None, iterations=1, fast=fast, **warm)
    stamps = [(time.perf_counter(), time.process_time())]
    distill(method, ipc, data, lambda: stamps.append((time.perf_counter(), time.process_time())),
            iterations=iterations, fast=fast)
    wall = [b[0] - a[0] for a, b in pairwise(stamps)]
    cpu = [b[1] - a[1] for a, b in pairwise(stamps)]
    return {"wall": wall, "cpu": cpu, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def measure(name: str, fast: bool, iterations: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--fast", str(int(fast)), "--iterations", str(iterations)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(name: str, runs: dict[bool, list[dict]]) -> str:
    _, _, ref_s, ref_gb = SETTINGS[name]
    s = {f: statistics.median(x for r in runs[f] for x in r["wall"]) for f in runs}
    c = {f: statistics.median(x for r in runs[f] for x in r["cpu"]) for f in runs}
    gb = {f: max(r["peak_gb"] for r in runs[f]) for f in runs}
    return (f"{name:<10} {ref_s:>8} {s[False]:>8.2f} {s[True]:>8.2f} {s[False] / s[True]:>6.2f}x "
            f"{c[False]:>8.1f} {c[True]:>8.1f} {c[False] / c[True]:>6.2f}x  {ref_gb:>5} {gb[False]:>5.2f} {gb[True]:>5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--iterations", type=int, default=2, help="timed outer iterations per run")
    ap.add_argument("--repeats", type=int, default=1, help="old/new pairs per setting")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--fast", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, bool(args.fast), args.iterations)))
        return
    names = args.settings.split(",")
    runs = {n: {False: [], True: []} for n in names}
    for r in range(args.repeats):
        for n in names:
            for fast in ((False, True) if r % 2 == 0 else (True, False)):
                runs[n][fast].append(measure(n, fast, args.iterations))
                print(f"  {n} fast={fast}: {runs[n][fast][-1]}", file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), {args.iterations} timed "
          f"iterations x {args.repeats} repeats; s = median wall seconds per outer iteration")
    print(f"{'setting':<10} {'ref s':>8} {'old s':>8} {'new s':>8} {'speed':>7} {'old cpu':>8} "
          f"{'new cpu':>8} {'speed':>7}  {'refGB':>5} {'oldGB':>5} {'newGB':>5}")
    for n in names:
        print(row(n, runs[n]))


if __name__ == "__main__":
    main()
