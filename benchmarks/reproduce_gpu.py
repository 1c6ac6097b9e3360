"""Reproduce the published CIFAR-10 rows a CPU cannot reach (DM and MTT, IPC 1 and 10) on one GPU.

    python benchmarks/reproduce_gpu.py --cifar10 imagefolder:DATA/cifar10 --data-root DATA --out OUT

Runs one ``ddbench run`` per (method, IPC) under each paper's evaluation protocol
(``dm-eval``: 20 networks, ``mtt-eval``: 5, 1000 epochs each, DSA), then writes
``OUT/report.json`` (``ddbench report --format json``), ``OUT/check.txt`` (``ddbench check``
against results/baselines/reported.csv, the local copy compared as ``cifar10``) and
``OUT/reproduce.json`` (commands, seconds, exit codes, the budget and its deviations).

Budgets (``--budget gpu``) are sized for about 8 minutes on one H100/H200; they are reduced
from the papers' and each reduction is written into ``reproduce.json`` as a deviation:
DM 5,000 of 20,000 iterations; MTT 3 experts of 22 epochs (the paper: 100 of 50) and 1,000
of 5,000 iterations, with the authors' per-setting values otherwise (ZCA, syn_steps,
expert_epochs, max_start_epoch, learning rates). One distillation seed. An ``imagefolder:``
copy is normalised with CIFAR-10's reference constants (``imagefolder.stats=cifar10``). The published
numbers are means over 5 seeds, and MTT's is the best over distillation checkpoints, so a
shortfall here is expected and reported, not hidden. ``--budget tiny`` runs the same
pipeline in seconds (the CPU test).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# the authors' per-setting MTT values (ddbench.builtins.distillers.mtt.PAPER_TABLE) keyed for CIFAR-10:
# a local image-folder copy is not named cifar10, so the preset cannot find them itself
BUDGETS = {
    "gpu": {
        "dm": {"iterations": 5000},
        "mtt": {"iterations": 1000, "num_experts": 3, "train_epochs": 22},
        "eval": {},
        "deviations": ["DM: 5,000 of the paper's 20,000 iterations",
                       "MTT: 3 expert trajectories of 22 epochs (paper: 100 of 50)",
                       "MTT: 1,000 of the paper's 5,000 iterations; the final set, not the best checkpoint",
                       "one distillation seed (papers: 5)"],
    },
    "tiny": {
        "dm": {"iterations": 2},
        "mtt": {"iterations": 2, "num_experts": 1, "train_epochs": 3, "syn_steps": 2, "expert_epochs": 1,
                "max_start_epoch": 1, "expert_images_per_class": 20},
        "eval": {"epochs": 1, "num_eval": 1},
        "deviations": ["tiny: a pipeline test, not a reproduction"],
    },
}


def runs(spec: str, budget: dict) -> list[tuple[str, int, list[str]]]:
    """(method, ipc, ddbench run arguments) for each published row."""
    from ddbench.builtins.distillers.mtt import PAPER_TABLE

    out = []
    for ipc in (1, 10):
        args = [f"dm.{k}={v}" for k, v in budget["dm"].items()]
        out.append(("dm", ipc, ["--methods", "dm", "--ipc", str(ipc), *_sets(args)]))
    for ipc in (1, 10):
        values = {**PAPER_TABLE[("cifar10", ipc)], **budget["mtt"]}
        args = [f"mtt.{k}={v}" for k, v in values.items()]
        out.append(("mtt", ipc, ["--methods", "mtt", "--conditions", "zca", "--ipc", str(ipc), *_sets(args)]))
    return out


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar10", required=True, help="dataset spec of CIFAR-10, e.g. imagefolder:DATA/cifar10")
    ap.add_argument("--data-root", default="datasets")
    ap.add_argument("--out", default="results/reproduce-gpu")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--budget", choices=list(BUDGETS), default="gpu")
    a = ap.parse_args(argv)
    budget = BUDGETS[a.budget]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "reproduce.sqlite"
    copy = a.cifar10.startswith("imagefolder:")
    stored_as = a.cifar10 + ("[stats=cifar10]" if copy else "")  # the dataset name its rows carry
    common = ["--datasets", a.cifar10, "--seeds", "0", "--preset", "paper", "--store", str(store),
              "--data-root", a.data_root, "--device", a.device, "--quiet",
              *_sets(f"eval.{k}={v}" for k, v in budget["eval"].items()),
              # a local copy is normalised with CIFAR-10's reference constants, as the papers' code does
              *(_sets(["imagefolder.stats=cifar10"]) if copy else [])]
    record = {"budget": a.budget, "deviations": budget["deviations"], "runs": []}
    for method, ipc, args in runs(a.cifar10, budget):
        cmd = [sys.executable, "-m", "ddbench", "run", *args, *common]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        record["runs"].append({"method": method, "ipc": ipc, "command": cmd[2:], "exit": proc.returncode,
                               "seconds": round(time.perf_counter() - start, 1),
                               "stderr_tail": proc.stderr[-2000:]})
        print(f"{method} ipc {ipc}: exit {proc.returncode}, {record['runs'][-1]['seconds']} s", flush=True)
    ddbench = [sys.executable, "-m", "ddbench"]
    rep = subprocess.run([*ddbench, "report", "--store", str(store), "--format", "json", "-o",
                          str(out / "report.json")], capture_output=True, text=True, cwd=REPO)
    chk = subprocess.run([*ddbench, "check", str(REPO / "results/baselines/reported.csv"), "--store", str(store),
                          "--dataset-as", f"{stored_as}=cifar10"], capture_output=True, text=True, cwd=REPO)
    (out / "check.txt").write_text(chk.stdout + chk.stderr)
    record.update(report_exit=rep.returncode, check_exit=chk.returncode,
                  check_verdict=(chk.stdout.strip().splitlines() or [chk.stderr.strip()])[-1])
    (out / "reproduce.json").write_text(json.dumps(record, indent=2) + "\n")
    print(chk.stdout + chk.stderr)
    return 0 if all(r["exit"] == 0 for r in record["runs"]) and rep.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
