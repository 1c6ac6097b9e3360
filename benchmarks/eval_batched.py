"""Evaluation runs one by one (``evaluate``) against together (``evaluate_many``).

N runs of ConvNet (the default: width 128, depth 3, instance norm) on a random CIFAR-shaped
IPC-10 set (100 images 3x32x32, 10 classes), tested on random images, timed side by side
in this process. The order alternates between repetitions (S B, B S, ...) so that a noisy
machine favours neither; the script prints the medians, their ratio, and how far the two
sets of accuracies are apart.

    python benchmarks/eval_batched.py --epochs 50 --nets 5 --repeats 2 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddbench.builtins.models.convnet import ConvNet
from ddbench.data.bundle import DataBundle
from ddbench.evaluation.batched import evaluate_many
from ddbench.evaluation.protocol import Protocol, ProtocolParams, evaluate
from ddbench.runtime.allocator import tune_allocator
from ddbench.synthetic import SyntheticSet


def problem(test_images: int) -> tuple[DataBundle, SyntheticSet]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(10)
    synset = SyntheticSet(torch.randn(100, 3, 32, 32, generator=g), labels)
    data = DataBundle("random-cifar", synset.images, labels, torch.randn(test_images, 3, 32, 32, generator=g),
                      torch.randint(0, 10, (test_images,), generator=g), [str(c) for c in range(10)],
                      (0.0,) * 3, (1.0,) * 3)
    return data, synset


def nets(seeds: list[int]) -> list[torch.nn.Module]:
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(ConvNet(ConvNet.Params()).build(3, 10, (32, 32)))
    return out


def timed(fn) -> tuple[float, list[float]]:
    start = time.perf_counter()
    accs = fn()
    return time.perf_counter() - start, accs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--nets", type=int, default=5)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    tune_allocator()  # as ddbench run does
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data, synset = problem(args.test_images)
    protocol = Protocol(ProtocolParams(epochs=args.epochs), "paper")
    seeds = list(range(args.nets))

    def sequential():
        return [evaluate(n, synset, data, protocol, s, device) for n, s in zip(nets(seeds), seeds, strict=True)]

    def batched():
        return evaluate_many(nets(seeds), synset, data, protocol, seeds, device)

    times: dict[str, list[float]] = {"sequential": [], "batched": []}
    accs: dict[str, list[float]] = {}
    for r in range(args.repeats):
        order = [("sequential", sequential), ("batched", batched)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            seconds, accs[name] = timed(fn)
            times[name].append(seconds)
            print(f"repeat {r + 1} {name}: {seconds:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    gap = max(abs(a - b) for a, b in zip(accs["sequential"], accs["batched"], strict=True))
    print(f"{args.nets} runs, {args.epochs} epochs, {args.test_images} test images, {device}, "
          f"{torch.get_num_threads()} thread(s), {args.repeats} alternating repeats")
    print(f"sequential {med['sequential']:.1f} s, batched {med['batched']:.1f} s, "
          f"ratio batched/sequential {med['batched'] / med['sequential']:.2f}")
    print(f"largest accuracy difference {gap:.4f} (sequential {accs['sequential']}, batched {accs['batched']})")


if __name__ == "__main__":
    main()
