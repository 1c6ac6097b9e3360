"""``ddbench bench``: seconds per iteration and peak memory of each method, side by side with
the figures of the public reference implementations.

Every setting runs in a fresh interpreter (``python -m ddbench.bench SETTING``), so its peak
resident memory is its own and nothing warms up for the next. The default data are random
tensors of CIFAR-10's shape (50,000 + 10,000 images, 3x32x32, 10 classes): the work of an
iteration does not depend on the pixel values, and anyone can rerun the benchmark without
the dataset; ``--data cifar10`` (or any dataset spec) measures on real data. MTT's settings
read expert end points from a stand-in buffer (a fresh network and a perturbation of it): the
unroll costs the same whatever the trajectory.

Seconds per iteration are the median over the measured iterations after the first (warm-up).
One more iteration then runs under ``torch.utils.flop_counter.FlopCounterMode`` (not timed):
its matmul/convolution FLOPs over the median seconds give the achieved GFLOP/s, shown beside
the machine's dense fp32 GEMM rate measured in its own process, the practical ceiling a
faster implementation of the same arithmetic can approach.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddbench.runtime import compiling


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # "distill", "experts" or "eval"
    method: str = ""
    ipc: int = 10
    params: dict[str, Any] = field(default_factory=dict)
    #: the reference implementation's figures on a 2-core CPU machine (issue table)
    ref_seconds: str = ""
    ref_mem_gb: str = ""
    #: what "an iteration" is for this setting
    unit: str = "outer iteration"


SETTINGS = [
    Setting("dm", "distill", "dm", 10, {}, "1.8", "2.3"),
    Setting("dc-ipc1", "distill", "dc", 1, {}, "4.6", "2.6"),
    Setting("dc-ipc10", "distill", "dc", 10, {}, "142-144", "2.8"),
    Setting("dsa-ipc10", "distill", "dsa", 10, {}, "142-144", "2.8"),
    # bfloat16 autocast: an option with its own numbers, beside the float32 reference figures
    Setting("dm-bf16", "distill", "dm", 10, {"amp": "bf16"}, "1.8", "2.3"),
    Setting("dc-ipc1-bf16", "distill", "dc", 1, {"amp": "bf16"}, "4.6", "2.6"),
    Setting("dc-ipc10-bf16", "distill", "dc", 10, {"amp": "bf16"}, "142-144", "2.8"),
    Setting("mtt-ss10", "distill", "mtt", 10, {"syn_steps": 10}, "~12", "5.5"),
    Setting("mtt-ss30", "distill", "mtt", 10, {"syn_steps": 30}, "32-37", "12.8"),
    Setting("mtt-ss80", "distill", "mtt", 10, {"syn_steps": 80}, "", ""),
    Setting("mtt-ss10-full", "distill", "mtt", 10, {"syn_steps": 10, "backprop": "full"}, "~12", "5.5"),
    Setting("mtt-ss30-full", "distill", "mtt", 10, {"syn_steps": 30, "backprop": "full"}, "32-37", "12.8"),
    Setting("experts", "experts", unit="epoch", ref_seconds="~95", ref_mem_gb="3.1"),
]
BY_NAME = {s.name: s for s in SETTINGS}
DEFAULT = [s.name for s in SETTINGS if s.name not in ("mtt-ss30-full",)]


def random_bundle(train: int = 50_000, test: int = 10_000, classes: int = 10, seed: int = 0):
    """CIFAR-10-shaped random data (normalised already): the benchmark's default input."""
    from ddbench.data.bundle import DataBundle

    g = torch.Generator().manual_seed(seed)
    return DataBundle(
        name="random-cifar10-shape",
        x_train=torch.randn(train, 3, 32, 32, generator=g), y_train=torch.arange(train) % classes,
        x_test=torch.randn(test, 3, 32, 32, generator=g), y_test=torch.arange(test) % classes,
        classes=[str(c) for c in range(classes)], mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    )


def load_data(spec: str, root: str):
    """``random`` or a dataset spec (``cifar10``, ``imagefolder:PATH``) with default parameters."""
    if spec == "random":
        return random_bundle()
    from pathlib import Path

    from ddbench.registry import load_registry

    name, _, arg = spec.partition(":")
    return load_registry().create("datasets", name).load(arg or None, Path(root), False)


class _StandInExperts:
    """Expert end points for timing: a fresh network's parameters and a perturbation."""

    def __init__(self, net: torch.nn.Module):
        from ddbench.evaluation.experts import flat_params

        g = torch.Generator().manual_seed(0)
        self.start = flat_params(net)
        self.target = self.start + 0.01 * torch.randn(self.start.shape, generator=g)

    def read(self, i: int, epochs: list[int]) -> list[torch.Tensor]:
        return [self.start.clone(), self.target.clone()][: len(epochs)]


def _model(registry, name: str, data):
    return registry.create("models", name).build(data.channels, data.num_classes, data.image_size)


class _CountLast:
    """Progress callback: time stamps of the first ``timed`` iterations, then (``count``) FLOP
    counting from the start of the next one until ``done``."""

    def __init__(self, timed: int, count: bool = True):
        self.timed, self.count, self.stamps = timed, count, [time.perf_counter()]
        self.counter = FlopCounterMode(display=False)
        self.counting = False

    def __call__(self, step: int, total: int | None = None) -> None:
        if step <= self.timed:
            self.stamps.append(time.perf_counter())
        if step == self.timed and self.count:
            self.counter.__enter__()
            self.counting = True

    def done(self) -> tuple[list[float], int | None]:
        if self.counting:
            self.counter.__exit__(None, None, None)
        flops = self.counter.get_total_flops() if self.count else None
        return [b - a for a, b in pairwise(self.stamps)], flops


def measure_distill(setting: Setting, data, iterations: int, device: torch.device,
                    flops: bool = True) -> tuple[list[float], int | None]:
    """Per-iteration seconds of ``iterations`` outer iterations of the setting's method, and
    (``flops``) the FLOPs of one more."""
    from ddbench.context import DistillContext
    from ddbench.registry import load_registry

    registry = load_registry()
    cls = registry.get("distillers", setting.method).cls
    params = cls.Params(**{**cls.preset_values("paper", "cifar10", setting.ipc), **setting.params,
                           "iterations": iterations + int(flops)})
    clock = _CountLast(iterations, flops)
    ctx = DistillContext(
        data=data, ipc=setting.ipc, seed=0, device=device, objectives=[],
        build_model=lambda name: _model(registry, name, data), progress=clock,
    )
    if setting.method == "mtt":
        ctx.experts = _StandInExperts(_model(registry, params.model, data))
    try:
        cls(params).distill(ctx)
    finally:
        times, flops = clock.done()
    return times, flops


def measure_experts(data, epochs: int, device: torch.device, flops: bool = True) -> tuple[list[float], int | None]:
    """Seconds per epoch of expert training with the reference settings (``buffer.py``), and
    (``flops``) the FLOPs of one more epoch."""
    from ddbench.builtins.distillers.mtt import MTT
    from ddbench.evaluation.augment import resolve_strategy
    from ddbench.evaluation.training import dsa, train_epoch
    from ddbench.registry import load_registry

    p = MTT.Params()
    net = _model(load_registry(), p.model, data).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=p.expert_lr, momentum=p.expert_momentum,
                          weight_decay=p.expert_weight_decay)
    gen = torch.Generator().manual_seed(0)
    x, y = data.x_train.to(device), data.y_train.to(device)
    strategy = resolve_strategy(p.dsa_strategy, data.dsa_strategy)
    clock = _CountLast(epochs, flops)
    try:
        fast = compiling.first_order(net, device, data.image_size)  # as ExpertBuffer.build
        for epoch in range(epochs + int(flops)):
            train_epoch(fast, opt, x, y, p.expert_batch, dsa(strategy), gen)
            clock(epoch + 1)
    finally:
        times, flops = clock.done()
    return times, flops


def gemm_gflops(device: torch.device, n: int = 2048, seconds: float = 3.0) -> float:
    """Best rate of a dense fp32 ``n x n`` matmul over about ``seconds``: the practical peak of
    this machine (its threads, its BLAS) for the arithmetic the methods are made of."""
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best, end = float("inf"), time.perf_counter() + seconds
    torch.mm(a, b)
    while time.perf_counter() < end:
        sync()
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_one(name: str, data_spec: str, root: str, iterations: int, device: str, count_flops: bool = True) -> dict:
    """Measure one setting in this process (the worker side of ``ddbench bench``), with the malloc
    tuning that ``ddbench run`` applies, so the numbers are those of a run."""
    from ddbench.runtime.allocator import tune_allocator

    tuned = tune_allocator()
    setting = BY_NAME[name]
    dev = torch.device(device)
    data = load_data(data_spec, root)
    if setting.kind == "experts":
        times, flops = measure_experts(data, max(2, iterations), dev, count_flops)
    else:
        times, flops = measure_distill(setting, data, iterations, dev, count_flops)
    measured = times[1:] or times
    seconds = statistics.median(measured)
    return {"setting": name, "method": setting.method or setting.kind, "ipc": setting.ipc,
            "params": setting.params, "unit": setting.unit, "iterations": len(times),
            "seconds": seconds, "seconds_all": times, "flops": flops,
            "gflops_per_s": None if flops is None else flops / seconds / 1e9,
            "peak_mb": _peak_mb(dev), "ref_seconds": setting.ref_seconds, "ref_mem_gb": setting.ref_mem_gb,
            "malloc_tuned": tuned, "compile": compiling.mode()}


def run_all(names: list[str], data_spec: str, root: str, iterations: int, device: str,
            echo=print, count_flops: bool = True) -> list[dict]:
    """Each setting in a fresh interpreter; returns their records."""
    records = []
    for name in names:
        cmd = [sys.executable, "-m", "ddbench.bench", name, "--data", data_spec, "--data-root", root,
               "--iterations", str(iterations), "--device", device] + ([] if count_flops else ["--no-flops"])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            records.append({"setting": name, "error": tail})
            echo(f"  {name}: failed: {tail}")
            continue
        rec = json.loads(done.stdout.strip().splitlines()[-1])
        records.append(rec)
        echo(f"  {name}: {rec['seconds']:.3g} s per {rec['unit']}, peak {rec['peak_mb'] / 1024:.2f} GB")
    return records


def environment(device: str) -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "device": device,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "compile": compiling.mode()}


def measure_gemm(device: str) -> float | None:
    """``gemm_gflops`` in a fresh interpreter (None if that fails)."""
    done = subprocess.run([sys.executable, "-m", "ddbench.bench", "--gemm", "--device", device],
                          capture_output=True, text=True)
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def table(records: list[dict], gemm: float | None = None) -> str:
    """The records beside the reference figures; ``gemm`` (GFLOP/s) adds a share-of-peak column."""
    from tabulate import tabulate

    rows = []
    for r in records:
        if "error" in r:
            rows.append([r["setting"], "", "failed", "", "", "", "", "", r["error"][:60]])
            continue
        rate = r["gflops_per_s"]
        share = f"{100 * rate / gemm:.0f}%" if gemm and rate is not None else "-"
        rows.append([r["setting"], r["unit"], f"{r['seconds']:.3g}", r["ref_seconds"] or "-",
                     f"{r['peak_mb'] / 1024:.2f}", r["ref_mem_gb"] or "-", "-" if rate is None else f"{rate:.1f}",
                     share, r["iterations"]])
    return tabulate(rows, headers=["setting", "per", "seconds", "reference s", "peak GB",
                                   "reference GB", "GFLOP/s", "of GEMM", "measured"])


def _main() -> None:
    ap = argparse.ArgumentParser(description="measure one ddbench bench setting (worker)")
    ap.add_argument("setting", nargs="?", choices=sorted(BY_NAME))
    ap.add_argument("--gemm", action="store_true", help="print this machine's fp32 GEMM GFLOP/s")
    ap.add_argument("--data", default="random")
    ap.add_argument("--data-root", default="datasets")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-flops", action="store_true", help="skip the extra FLOP-counting iteration")
    a = ap.parse_args()
    if a.gemm:
        print(gemm_gflops(torch.device(a.device)))
        return
    if a.setting is None:
        ap.error("a setting or --gemm is required")
    print(json.dumps(run_one(a.setting, a.data, a.data_root, a.iterations, a.device, not a.no_flops)))


if __name__ == "__main__":
    _main()
