"""DC, DSA, DM and MTT seconds per iteration (and expert training per epoch): the public reference
code against ddbench, side by side.

The issue's reference figures were measured on some other machine; this script measures both
on this one, so the ratio says whether ddbench does the same work faster. The reference side
imports ``utils.py`` and ``networks.py`` from a checkout of the reference repository
(github.com/VICO-UoE/DatasetCondensation, passed with ``--reference``; nothing of it is copied
here) and runs the synthesis loops of its ``main.py`` (DC/DSA) and ``main_DM.py`` (DM) as
written there: per class, ``get_images`` by ``np.random.permutation``, the per-class forward
passes, ``match_loss``, the inner ``epoch('train', ...)`` over a ``DataLoader``. The ddbench
side is ``ddbench.bench.measure_distill``, as ``ddbench bench`` runs it.

Both use CIFAR-10-shaped random tensors (the work does not depend on pixel values). Every
measurement runs in a fresh interpreter (peak memory of its own); the two sides alternate
(R D, D R, ...) so that a noisy machine favours neither. ``experts`` times one training epoch of
an MTT expert as ``buffer.py`` runs it (the reference ``epoch('train', ..., aug=True)`` over a
shuffled ``DataLoader`` of batch 256 with DSA, SGD lr 0.01 without momentum or weight decay;
the DC repository's ``epoch``, which MTT's copies but for its ZCA/texture options) against
``ddbench.bench.measure_experts``; the per-epoch test pass of ``buffer.py`` is left out on
both sides. ``mtt-ssN`` runs an iteration of MTT's ``distill.py`` at CIFAR-10 IPC 10
with ``syn_steps`` N (its ``ReparamModule`` from ``--reference-mtt``, a checkout of
github.com/GeorgeCazenavette/mtt-distillation; ``get_network`` and ``DiffAugment`` from the DC
checkout, of which MTT's ``utils.py`` is a copy) against ``ddbench bench``'s ``mtt-ssN``; the
expert end points are stand-ins on both sides. Reported: per side, the median over
repetitions of each worker's median seconds per outer iteration (after one warm-up
iteration), its peak RSS, and the ratio ddbench / reference. Much of ddbench's lead on CPU
is its malloc tuning (``ddbench.runtime.allocator``); ``--tune-reference`` gives the reference side the
same tuning, so the rest of the difference shows on its own.

``--outer``/``--inner`` shrink an IPC-10 iteration (10 x 50 loops in the reference schedule)
for a quick look; both sides then run the same reduced schedule.

    python benchmarks/reference_side_by_side.py --reference ~/src/DatasetCondensation \\
        --reference-mtt ~/src/mtt-distillation \\
        --settings dc-ipc1,dm-ipc10,dc-ipc10,dsa-ipc10,experts,mtt-ss30 --iterations 3 --repeats 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import torch

DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"  # the reference README's, for CIFAR-10


def parse_setting(text: str) -> tuple[str, int]:
    """``(method, ipc)``; for ``mtt-ssN`` ``("mtt", N)`` (syn_steps N at IPC 10)."""
    if text == "experts":
        return "experts", 0
    method, sep, n = text.partition("-ss" if text.startswith("mtt") else "-ipc")
    if method not in ("dc", "dsa", "dm", "mtt") or not sep or not n.isdigit():
        raise SystemExit(f"bad setting {text!r}: expected dc-ipcN, dsa-ipcN, dm-ipcN, mtt-ssN or experts")
    return method, int(n)


def _durations(step, n: int) -> list[float]:
    """Seconds of each of ``n`` calls of ``step()``."""
    stamps = [time.perf_counter()]
    for _ in range(n):
        step()
        stamps.append(time.perf_counter())
    return [b - a for a, b in pairwise(stamps)]


# --- the reference side -------------------------------------------------------------------

def reference_run(utils, method: str, ipc: int, iterations: int, outer: int, inner: int,
                  images_all, labels_all) -> list[float]:
    """``iterations`` outer iterations of the reference loop; their durations."""
    if method == "experts":
        return _reference_experts(utils, iterations, images_all, labels_all)
    if method == "mtt":
        return _reference_mtt(utils, ipc, iterations)
    num_classes, channel, im_size = 10, 3, (32, 32)
    indices_class = [torch.nonzero(labels_all == c).flatten().tolist() for c in range(num_classes)]

    def get_images(c, n):  # as main.py: random n images from class c
        idx_shuffle = np.random.permutation(indices_class[c])[:n]
        return images_all[idx_shuffle]

    dsa = method in ("dsa", "dm")
    args = SimpleNamespace(device="cpu", dis_metric="ours", dsa=dsa, dsa_param=utils.ParamDiffAug(),
                           dsa_strategy=DSA_STRATEGY if dsa else "None", batch_real=256, batch_train=256,
                           lr_net=0.01, lr_img=1.0 if method == "dm" else 0.1, dc_aug_param=None,
                           outer_loop=outer, inner_loop=inner, ipc=ipc)
    image_syn = torch.randn(size=(num_classes * ipc, channel, *im_size), dtype=torch.float, requires_grad=True)
    label_syn = torch.arange(num_classes).repeat_interleave(ipc)
    optimizer_img = torch.optim.SGD([image_syn], lr=args.lr_img, momentum=0.5)
    criterion = torch.nn.CrossEntropyLoss()
    step = _dm_iteration if method == "dm" else _dc_iteration
    return _durations(lambda: step(utils, args, image_syn, label_syn, optimizer_img, criterion, get_images,
                                   num_classes, channel, im_size), iterations)


def _reference_experts(utils, epochs: int, images_all, labels_all) -> list[float]:
    """buffer.py's training loop for one expert: ``epochs`` epochs; their durations."""
    args = SimpleNamespace(device="cpu", dsa=True, dsa_param=utils.ParamDiffAug(), dsa_strategy=DSA_STRATEGY)
    net = utils.get_network("ConvNet", 3, 10, (32, 32))
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0, weight_decay=0)
    dst = utils.TensorDataset(images_all, labels_all)
    loader = torch.utils.data.DataLoader(dst, batch_size=256, shuffle=True, num_workers=0)
    criterion = torch.nn.CrossEntropyLoss()
    return _durations(lambda: utils.epoch("train", loader, net, optimizer, criterion, args, aug=True), epochs)


def _reference_mtt(utils, syn_steps: int, iterations: int, ipc: int = 10) -> list[float]:
    """distill.py's iteration (CIFAR-10 IPC 10, batch_syn None = all 100 images, DSA, no ZCA):
    a ``ReparamModule`` student unrolled ``syn_steps`` steps with ``create_graph``, the
    normalised parameter-matching loss, one backward through the whole unroll. The expert end
    points are stand-ins (a fresh network's parameters and a perturbation), as on the ddbench
    side; reading a buffer file is not timed on either."""
    from reparam_module import ReparamModule  # the MTT repository's

    args = SimpleNamespace(dsa_param=utils.ParamDiffAug(), dsa_strategy=DSA_STRATEGY, batch_syn=10 * ipc)
    image_syn = torch.randn(10 * ipc, 3, 32, 32, requires_grad=True)
    label_syn = torch.arange(10).repeat_interleave(ipc)
    syn_lr = torch.tensor(0.01).requires_grad_(True)
    optimizer_img = torch.optim.SGD([image_syn], lr=1000, momentum=0.5)
    optimizer_lr = torch.optim.SGD([syn_lr], lr=1e-05, momentum=0.5)
    criterion = torch.nn.CrossEntropyLoss()
    expert = torch.cat([p.detach().reshape(-1) for p in utils.get_network("ConvNet", 3, 10, (32, 32)).parameters()])

    def iteration():  # distill.py's loop body
        student_net = ReparamModule(utils.get_network("ConvNet", 3, 10, (32, 32)))
        student_net.train()
        num_params = sum([np.prod(p.size()) for p in (student_net.parameters())])
        starting_params, target_params = expert.clone(), expert + 0.01 * torch.randn_like(expert)
        student_params = [starting_params.clone().requires_grad_(True)]
        indices_chunks = []
        for _step in range(syn_steps):
            if not indices_chunks:
                indices = torch.randperm(len(image_syn))
                indices_chunks = list(torch.split(indices, args.batch_syn))
            these_indices = indices_chunks.pop()
            x = utils.DiffAugment(image_syn[these_indices], args.dsa_strategy, param=args.dsa_param)
            ce_loss = criterion(student_net(x, flat_param=student_params[-1]), label_syn[these_indices])
            grad = torch.autograd.grad(ce_loss, student_params[-1], create_graph=True)[0]
            student_params.append(student_params[-1] - syn_lr * grad)
        param_loss = torch.nn.functional.mse_loss(student_params[-1], target_params, reduction="sum")
        param_dist = torch.nn.functional.mse_loss(starting_params, target_params, reduction="sum")
        grand_loss = (param_loss / num_params) / (param_dist / num_params)
        optimizer_img.zero_grad()
        optimizer_lr.zero_grad()
        grand_loss.backward()
        optimizer_img.step()
        optimizer_lr.step()

    return _durations(iteration, iterations)


def _dc_iteration(utils, args, image_syn, label_syn, optimizer_img, criterion, get_images, num_classes,
                  channel, im_size):
    """main.py, 'Train synthetic data' (ConvNet: no BatchNorm branch)."""
    net = utils.get_network("ConvNet", channel, num_classes, im_size)
    net.train()
    net_parameters = list(net.parameters())
    optimizer_net = torch.optim.SGD(net.parameters(), lr=args.lr_net)
    optimizer_net.zero_grad()
    for ol in range(args.outer_loop):
        loss = torch.tensor(0.0)
        for c in range(num_classes):
            img_real = get_images(c, args.batch_real)
            lab_real = torch.ones((img_real.shape[0],), dtype=torch.long) * c
            img_syn = image_syn[c * args.ipc:(c + 1) * args.ipc].reshape((args.ipc, channel, *im_size))
            lab_syn = torch.ones((args.ipc,), dtype=torch.long) * c
            if args.dsa:
                seed = int(time.time() * 1000) % 100000
                img_real = utils.DiffAugment(img_real, args.dsa_strategy, seed=seed, param=args.dsa_param)
                img_syn = utils.DiffAugment(img_syn, args.dsa_strategy, seed=seed, param=args.dsa_param)
            gw_real = torch.autograd.grad(criterion(net(img_real), lab_real), net_parameters)
            gw_real = list(_.detach().clone() for _ in gw_real)
            gw_syn = torch.autograd.grad(criterion(net(img_syn), lab_syn), net_parameters, create_graph=True)
            loss += utils.match_loss(gw_syn, gw_real, args)
        optimizer_img.zero_grad()
        loss.backward()
        optimizer_img.step()
        loss.item()
        if ol == args.outer_loop - 1:
            break
        dst = utils.TensorDataset(image_syn.detach().clone(), label_syn.clone())
        trainloader = torch.utils.data.DataLoader(dst, batch_size=args.batch_train, shuffle=True, num_workers=0)
        for _ in range(args.inner_loop):
            utils.epoch("train", trainloader, net, optimizer_net, criterion, args, aug=bool(args.dsa))


def _dm_iteration(utils, args, image_syn, label_syn, optimizer_img, criterion, get_images, num_classes,
                  channel, im_size):
    """main_DM.py, 'Train synthetic data' (ConvNet: the per-class branch)."""
    net = utils.get_network("ConvNet", channel, num_classes, im_size)
    net.train()
    for param in list(net.parameters()):
        param.requires_grad = False
    loss = torch.tensor(0.0)
    for c in range(num_classes):
        img_real = get_images(c, args.batch_real)
        img_syn = image_syn[c * args.ipc:(c + 1) * args.ipc].reshape((args.ipc, channel, *im_size))
        seed = int(time.time() * 1000) % 100000
        img_real = utils.DiffAugment(img_real, args.dsa_strategy, seed=seed, param=args.dsa_param)
        img_syn = utils.DiffAugment(img_syn, args.dsa_strategy, seed=seed, param=args.dsa_param)
        output_real = net.embed(img_real).detach()
        output_syn = net.embed(img_syn)
        loss += torch.sum((torch.mean(output_real, dim=0) - torch.mean(output_syn, dim=0)) ** 2)
    optimizer_img.zero_grad()
    loss.backward()
    optimizer_img.step()
    loss.item()


# --- the ddbench side ---------------------------------------------------------------------

def ddbench_run(method: str, ipc: int, iterations: int, outer: int, inner: int, data) -> list[float]:
    from ddbench.bench import Setting, measure_distill, measure_experts

    if method == "experts":
        return measure_experts(data, iterations, torch.device("cpu"), flops=False)[0]
    if method == "mtt":  # as ddbench bench's mtt-ssN: the paper preset, exact gradients by recomputation
        times, _ = measure_distill(Setting(f"mtt-ss{ipc}", "distill", "mtt", 10, {"syn_steps": ipc}), data,
                                   iterations, torch.device("cpu"), flops=False)
        return times
    params = {} if method == "dm" else {"outer_loop": outer, "inner_loop": inner}
    times, _ = measure_distill(Setting(f"{method}-ipc{ipc}", "distill", method, ipc, params), data,
                               iterations, torch.device("cpu"), flops=False)
    return times


# --- driver -------------------------------------------------------------------------------

def worker(a) -> dict:
    from ddbench.bench import random_bundle
    from ddbench.runtime.allocator import tune_allocator

    if a.threads:
        torch.set_num_threads(a.threads)
    method, ipc = parse_setting(a.worker_setting)
    outer, inner = _loops(ipc, a) if method not in ("experts", "mtt") else (0, 0)
    data = random_bundle(train=a.train)
    if a.worker == "ddbench" or a.tune_reference:
        tune_allocator()  # as ddbench run does
    if a.worker == "reference":
        sys.path.insert(0, a.reference)
        if method == "mtt":
            if not a.reference_mtt:
                raise SystemExit("mtt settings need --reference-mtt (a checkout of mtt-distillation)")
            sys.path.insert(0, a.reference_mtt)
        import utils  # the reference repository's

        times = reference_run(utils, method, ipc, a.iterations, outer, inner, data.x_train, data.y_train)
    else:
        times = ddbench_run(method, ipc, a.iterations, outer, inner, data)
    measured = times[1:] or times
    return {"side": a.worker, "setting": a.worker_setting, "outer": outer, "inner": inner,
            "seconds": statistics.median(measured), "seconds_all": times,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _loops(ipc: int, a) -> tuple[int, int]:
    from ddbench.builtins.distillers.gradient_matching import REFERENCE_LOOPS

    if ipc not in REFERENCE_LOOPS:
        raise SystemExit(f"IPC {ipc} is not in the reference schedule {sorted(REFERENCE_LOOPS)}")
    ref_outer, ref_inner = REFERENCE_LOOPS[ipc]
    return a.outer or ref_outer, a.inner or ref_inner


def spawn(side: str, setting: str, a) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--worker-setting", setting, "--reference", a.reference,
           "--reference-mtt", a.reference_mtt or "",
           "--iterations", str(a.iterations), "--train", str(a.train), "--outer", str(a.outer),
           "--inner", str(a.inner)] + (["--threads", str(a.threads)] if a.threads else []) \
        + (["--tune-reference"] if a.tune_reference else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side} {setting} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True, help="checkout of VICO-UoE/DatasetCondensation")
    ap.add_argument("--reference-mtt", default=None,
                    help="checkout of GeorgeCazenavette/mtt-distillation (its reparam_module.py), for mtt-ssN")
    ap.add_argument("--settings", default="dc-ipc1,dm-ipc10,dc-ipc10,dsa-ipc10")
    ap.add_argument("--iterations", type=int, default=3, help="per worker; the first is a warm-up")
    ap.add_argument("--repeats", type=int, default=2, help="workers per side and setting (alternating)")
    ap.add_argument("--outer", type=int, default=0, help="outer loops per iteration [reference schedule]")
    ap.add_argument("--inner", type=int, default=0, help="inner epochs per outer loop [reference schedule]")
    ap.add_argument("--train", type=int, default=50_000, help="random training images")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--tune-reference", action="store_true",
                    help="give the reference side ddbench's malloc tuning too (separates that gain from the rest)")
    ap.add_argument("--output", default=None, help="write the records as JSON here")
    ap.add_argument("--worker", choices=["reference", "ddbench"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-setting", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a)))
        return
    from tabulate import tabulate

    settings = a.settings.split(",")
    for s in settings:
        parse_setting(s)
    records, rows = [], []
    for s in settings:
        runs = {"reference": [], "ddbench": []}
        for r in range(a.repeats):
            for side in (("reference", "ddbench") if r % 2 == 0 else ("ddbench", "reference")):
                rec = spawn(side, s, a)
                runs[side].append(rec)
                records.append(rec)
                print(f"  {s} {side}: {rec['seconds']:.3g} s/it, peak {rec['peak_mb'] / 1024:.2f} GB", flush=True)
        ref = statistics.median(x["seconds"] for x in runs["reference"])
        ours = statistics.median(x["seconds"] for x in runs["ddbench"])
        loops = f"{runs['ddbench'][0]['outer']}x{runs['ddbench'][0]['inner']}" if parse_setting(s)[0] in ("dc", "dsa") else "-"
        rows.append([s, loops, f"{ref:.3g}", f"{ours:.3g}", f"{ours / ref:.2f}",
                     f"{max(x['peak_mb'] for x in runs['reference']) / 1024:.2f}",
                     f"{max(x['peak_mb'] for x in runs['ddbench']) / 1024:.2f}"])
    print(tabulate(rows, headers=["setting", "outer x inner", "reference s/it (epoch)", "ddbench s/it (epoch)",
                                  "ddbench / reference", "reference GB", "ddbench GB"]))
    if a.output:
        with open(a.output, "w") as f:
            json.dump({"torch": torch.__version__, "threads": a.threads, "tune_reference": a.tune_reference,
                   "records": records}, f, indent=1)


if __name__ == "__main__":
    main()
