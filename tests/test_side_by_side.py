"""benchmarks/reference_side_by_side.py runs both sides in fresh processes and writes every record.

The reference repository is not part of ddbench, so a stand-in ``utils.py`` with the same
interface (``get_network``, ``DiffAugment``, ``match_loss``, ``TensorDataset``, ``epoch``, ...)
plays its part; each call it receives is counted, which shows the script drove the reference
loops as written (per class, per outer loop) rather than skipping them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_side_by_side.py"

STAND_IN = '''
import os
import torch

CALLS = os.environ["SBS_CALLS"]


def _count(name):
    with open(CALLS, "a") as f:
        f.write(name + "\\n")


class ParamDiffAug:
    pass


class _Net(torch.nn.Module):
    def __init__(self, channel, num_classes, im_size):
        super().__init__()
        self.conv = torch.nn.Conv2d(channel, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * im_size[0] * im_size[1], num_classes)

    def embed(self, x):
        return torch.relu(self.conv(x)).flatten(1)

    def forward(self, x):
        return self.fc(self.embed(x))


def get_network(model, channel, num_classes, im_size):
    _count("get_network")
    return _Net(channel, num_classes, im_size)


def DiffAugment(x, strategy, seed=-1, param=None):
    return x


def match_loss(gw_syn, gw_real, args):
    _count("match_loss")
    return sum(((a - b) ** 2).sum() for a, b in zip(gw_syn, gw_real))


class TensorDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def __len__(self):
        return len(self.images)


def epoch(mode, dataloader, net, optimizer, criterion, args, aug):
    _count("epoch")
    for x, y in dataloader:
        loss = criterion(net(DiffAugment(x, args.dsa_strategy)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
'''


#: MTT's ``reparam_module.py`` (the student evaluated at a flat parameter vector)
STAND_IN_REPARAM = '''
import torch
from utils import _count


class ReparamModule(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module
        self.names = [n for n, _ in module.named_parameters()]
        self.shapes = [p.shape for p in module.parameters()]
        self.flat_param = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in module.parameters()]))

    def forward(self, x, flat_param=None):
        _count("student_step")
        parts = flat_param.split([s.numel() for s in self.shapes])
        params = {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}
        return torch.func.functional_call(self.module, params, (x,))
'''


def test_side_by_side_runs_both_sides_of_every_setting(tmp_path):
    ref, ref_mtt = tmp_path / "reference", tmp_path / "mtt"
    ref.mkdir()
    ref_mtt.mkdir()
    (ref / "utils.py").write_text(STAND_IN)
    (ref_mtt / "reparam_module.py").write_text(STAND_IN_REPARAM)
    calls, out = tmp_path / "calls.txt", tmp_path / "side.json"
    settings = ("dm-ipc1", "dc-ipc1", "experts", "mtt-ss2")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--reference", str(ref), "--reference-mtt", str(ref_mtt),
         "--settings", ",".join(settings),
         "--iterations", "2", "--repeats", "1", "--train", "200", "--threads", "1", "--output", str(out)],
        capture_output=True, text=True, env={**os.environ, "SBS_CALLS": str(calls)}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = json.loads(out.read_text())["records"]
    assert sorted((r["setting"], r["side"]) for r in records) == sorted(
        (s, side) for s in settings for side in ("reference", "ddbench"))
    for r in records:
        assert len(r["seconds_all"]) == 2 and r["seconds"] > 0 and r["peak_mb"] > 50
    counted = calls.read_text().split()
    # dm: a network per iteration; dc-ipc1 (1 x 1 loops): a network and 10 class matches per
    # iteration, no inner training; experts: one network, an epoch per iteration; mtt: the
    # expert stand-in's network, then per iteration a student unrolled 2 steps
    assert counted.count("match_loss") == 2 * 10
    assert counted.count("get_network") == 2 + 2 + 1 + (1 + 2)
    assert counted.count("epoch") == 2
    assert counted.count("student_step") == 2 * 2
    assert "ddbench / reference" in done.stdout and "experts" in done.stdout


def test_side_by_side_rejects_a_bad_setting(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--reference", str(tmp_path), "--settings", "dm-ipc1,mtt"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "bad setting 'mtt'" in done.stderr and "experts" in done.stderr
