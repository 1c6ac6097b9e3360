"""The named evaluation protocols: each paper's own beside the uniform one, chosen per method
by the paper preset, stored under their own names, compared only with their own numbers."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, rows

from ddbench.evaluation import protocol as proto
from ddbench.evaluation.protocol import Protocol, ProtocolParams
from ddbench.plan.resolve import Resolver
from ddbench.registry import load_registry

NAMED = {e.name: e.cls for e in load_registry().entries("protocols")}

OWN = '''
import ddbench
from ddbench.builtins.distillers.random import Random

class Halfway(ddbench.ProtocolSpec):
    """A plugin's own protocol: DSA, 30 epochs, 3 nets."""
    name, stored_name, version = "halfway", "halfway-eval", 2
    values = {"dsa": True, "epochs": 30, "num_eval": 3}

class Mine(Random):
    """A plugin's distiller evaluated under its paper's protocol, the plugin's own."""
    name = "mine"
    paper_protocol = "halfway"

@ddbench.hookimpl
def register_protocols(register):
    register(Halfway)

@ddbench.hookimpl
def register_distillers(register):
    register(Mine)
'''


def test_a_plugin_registers_its_own_protocol_and_its_distiller_names_it(fake_plugin, ddb, tmp_path):
    fake_plugin("halfway", OWN)
    res = ddb("run", "--dry-run", "--methods", "mine,random", "--ipc", "1", "--seeds", "0",
              "--preset", "paper", "--store", str(tmp_path / "r.sqlite"))
    assert res.code == 0, res.err
    got = {line.split()[0]: line.split() for line in res.out.splitlines() if line.split()[:1] in (["mine"], ["random"])}
    assert (got["mine"][5], got["mine"][6]) == ("halfway-eval/v2", "3")
    assert got["random"][5] == "ddbench-eval/v1"
    listing = ddb("list", "protocols")
    assert "halfway" in listing.out and "stored as halfway-eval/v2; sets dsa=True, epochs=30, num_eval=3" in listing.out
    bad = ddb("run", "--dry-run", "--methods", "random", "--set", "eval.protocol=halfwa", "--store", str(tmp_path / "r.sqlite"))
    assert bad.code == 2 and "halfwa" in bad.err and "halfway" in bad.err and "method" in bad.err


def test_the_uniform_protocol_keeps_its_hash():
    """Stored results are keyed on it: the new fields at their neutral values change nothing."""
    p = Protocol(ProtocolParams(epochs=100, num_eval=2), "small")
    assert p.label == "ddbench-eval/v1"
    assert "protocol" not in p.as_dict() and "dc_aug" not in p.as_dict()
    assert p.hash == Protocol(ProtocolParams(epochs=100, num_eval=2, protocol="method"), "paper").hash


@pytest.mark.parametrize(("dataset", "model", "norm", "explicit", "want_aug", "want_epochs"), [
    ("mnist", "convnet", "instancenorm", set(), "crop_scale_rotate", 1000),
    ("fashionmnist", "convnet", "instancenorm", set(), "none", 300),
    ("cifar10", "convnet", "instancenorm", set(), "none", 300),
    ("cifar10", "convnet", "batchnorm", set(), "crop_noise", 1000),
    ("mnist", "convnet", "instancenorm", {"epochs"}, "crop_scale_rotate", 7),
])
def test_dc_protocol_follows_get_daparam(dataset, model, norm, explicit, want_aug, want_epochs):
    base = ProtocolParams(epochs=7, num_eval=2)
    out = proto.specialise(base, NAMED["dc"], explicit, dataset, model, {"norm": norm})
    assert (out.dsa, out.dc_aug, out.epochs, out.num_eval) == (False, want_aug, want_epochs, 20)


def test_preset_and_set_values_win_over_a_named_protocol():
    base = ProtocolParams(num_eval=3)
    out = proto.specialise(base, NAMED["dsa"], {"num_eval"}, "mnist", "convnet", {})
    assert (out.num_eval, out.epochs, out.dsa) == (3, 1000, True)


def test_paper_preset_evaluates_each_method_under_its_papers_protocol(ddb, tmp_path):
    res = ddb("run", "--dry-run", "--methods", "random,dc,dsa,dm,mtt", "--ipc", "1", "--seeds", "0",
              "--preset", "paper", "--store", str(tmp_path / "r.sqlite"))
    assert res.code == 0, res.err
    got = {line.split()[0]: line.split() for line in res.out.splitlines()[2:] if line.strip()
           and line.split()[0] in {"random", "dc", "dsa", "dm", "mtt"}}
    # method, dataset, ipc, seed, models, protocol, cells, ...
    assert {m: (v[5], v[6]) for m, v in got.items()} == {
        "random": ("ddbench-eval/v1", "5"), "dc": ("dc-eval/v1", "20"), "dsa": ("dsa-eval/v1", "20"),
        "dm": ("dm-eval/v1", "20"), "mtt": ("mtt-eval/v1", "5")}


def test_dc_protocol_run_is_stored_under_its_name(ddb, tmp_path, monkeypatch):
    """DC's augmentation runs inside evaluation (counted) and the row records the protocol."""
    import ddbench.evaluation.protocol as protocol_mod

    calls = []
    real = protocol_mod.dc_augment

    def counting(x, strategy, gen, *a, **k):
        calls.append(strategy)
        return real(x, strategy, gen, *a, **k)

    monkeypatch.setattr(protocol_mod, "dc_augment", counting)
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "random", "--ipc", "1", "--seeds", "0", "--store", str(store),
              "--set", "eval.protocol=dc", "--set", "eval.dc_aug=crop_noise", *TINY)
    assert res.code == 0, res.err
    (row,) = rows(store)
    assert row["protocol"] == "dc-eval/v1*"  # DC's own values on digits: no augmentation, 300 epochs, 20 nets
    params = json.loads(row["protocol_params"])
    assert params["name"] == "dc-eval" and params["dsa"] is False and params["dc_aug"] == "crop_noise"
    assert calls and set(calls) == {"crop_noise"}
    # the table footer names the protocol and what departs from DC's published values
    assert ("dc-eval/v1* (overrides: epochs=2 (dc-eval: 300), num_eval=1 (20), dc_aug=crop_noise (none)): "
            "not the published protocol") in res.out


#: a paper's protocol cheap enough to run at its published values in a test
QUICK = '''
import ddbench

class Quick(ddbench.ProtocolSpec):
    """A paper's protocol: no augmentation, 2 epochs, 2 nets."""
    name, stored_name = "quick", "quick-eval"
    values = {"dsa": False, "epochs": 2, "num_eval": 2}

@ddbench.hookimpl
def register_protocols(register):
    register(Quick)
'''
#: one random set on digits, evaluated under the protocol its --set names (the paper preset sets no
#: protocol value, the small one its epochs and networks)
RANDOM = ["--methods", "random", "--ipc", "1", "--seeds", "0", "--preset", "paper", "--quiet"]
PUBLISHED = "method,dataset,conditions,ipc,model,mean,std,n,labels,protocol\n"


def published(path, mean: float, protocol: str):
    path.write_text(PUBLISHED + f"random,digits,clean,1,convnet,{mean:.2f},0.1,5,hard,{protocol}\n")
    return str(path)


def _cell(preset: str, sets: dict, paper: str | None = "dsa", dataset: str = "mnist") -> Protocol:
    resolver = Resolver(load_registry(), preset, sets)
    (choice,) = resolver.protocols()
    return choice.for_cell(paper, dataset, resolver.models("convnet")[0])


def test_a_papers_protocol_off_its_published_values_is_starred_and_keeps_its_keys():
    assert _cell("paper", {}).label == "dsa-eval/v1" and _cell("paper", {}).deviations == ()
    off = _cell("paper", {("eval", "epochs"): ["100"], ("eval", "num_eval"): ["2"]})
    assert off.label == "dsa-eval/v1*" and off.deviations == ("epochs=100", "num_eval=2")
    # a label only: stored parameters and hash (the cells' keys) are those of the same values unstarred
    same = Protocol(off.params, "paper", "dsa-eval", 1)
    assert same.label == "dsa-eval/v1" and (off.as_dict(), off.hash) == (same.as_dict(), same.hash)
    # scheduling and the label mode are no departure (the label names the mode)
    assert _cell("paper", {("eval", "labels"): ["soft"], ("eval", "batched"): ["off"]}).label == "dsa-eval/v1+soft"
    assert _cell("paper", {("eval", "labels"): ["soft"], ("eval", "lr"): ["0.1"]}).label == "dsa-eval/v1*+soft"
    assert proto.starred("dsa-eval/v1+soft") == "dsa-eval/v1*+soft" == proto.starred("dsa-eval/v1*+soft")
    # the uniform protocol has no published values to depart from, the small preset's included
    assert _cell("small", {}, paper=None).label == "ddbench-eval/v1"
    assert _cell("small", {("eval", "protocol"): ["mtt"]}).label == "mtt-eval/v1*"
    # DC's published values follow the dataset and model (get_daparam)
    dc = ProtocolParams(dsa=False, dc_aug="none", epochs=300, num_eval=20)
    assert proto.deviations(NAMED["dc"], dc, "cifar10", "convnet", {"norm": "instancenorm"}) == {}
    assert proto.deviations(NAMED["dc"], dc, "mnist", "convnet", {"norm": "instancenorm"}) == {
        "epochs": (1000, 300), "dc_aug": ("crop_scale_rotate", "none")}
    assert _cell("paper", {}, paper="dc", dataset="cifar10").label == "dc-eval/v1"


def test_check_compares_a_published_number_with_its_protocol_at_its_values_only(fake_plugin, ddb, tmp_path):
    fake_plugin("quick", QUICK)
    store = tmp_path / "r.sqlite"
    for sets in (["eval.protocol=uniform", "eval.epochs=2", "eval.num_eval=1"], ["eval.protocol=quick"],
                 ["eval.protocol=quick", "eval.epochs=3"]):
        res = ddb("run", *RANDOM, "--store", str(store), *[a for s in sets for a in ("--set", s)])
        assert res.code == 0, res.err
    got = {}
    for r in rows(store):
        got.setdefault(r["protocol"], []).append(100 * r["accuracy"])
    assert sorted(got) == ["ddbench-eval/v1", "quick-eval/v1", "quick-eval/v1*"]
    mean = sum(got["quick-eval/v1"]) / 2
    res = ddb("check", published(tmp_path / "p.csv", mean, "quick-eval"), "--store", str(store), "--strict")
    assert res.code == 0, res.out + res.err
    assert "PASSED: 1 cell(s)" in res.out and f"{mean:.1f} ± " in res.out and "(n=2)" in res.out
    # without the protocol the number could be any of them: refused as ambiguous
    csv = published(tmp_path / "p.csv", mean, "")
    res = ddb("check", csv, "--store", str(store))
    assert res.code == 2 and "two protocols" in res.err
    # a local copy compared under the published name; a bad alias is a one-line error
    res = ddb("check", csv, "--store", str(store), "--dataset-as", "digits")
    assert res.code == 2 and "malformed --dataset-as 'digits'" in res.err
    res = ddb("check", csv, "--store", str(store), "--dataset-as", "mnist=cifar10")
    assert res.code == 2 and "--dataset-as 'mnist'" in res.err and "valid: digits" in res.err


def test_bad_protocol_values_are_one_line_errors(ddb, tmp_path):
    for bad, fragment in (("eval.protocol=nosuch", "eval.protocol"), ("eval.dc_aug=flip", "eval.dc_aug")):
        res = ddb("run", "--methods", "random", "--store", str(tmp_path / "r.sqlite"), "--set", bad, *TINY)
        assert res.code == 2 and fragment in res.err and len(res.err.strip().splitlines()) == 1, res.err
    assert not (tmp_path / "r.sqlite").exists()


def test_protocol_list_names_each_protocol(ddb):
    res = ddb("list", "eval")
    assert res.code == 0
    assert set(NAMED) == {"uniform", "dc", "dsa", "dm", "mtt"}
    for name, cls in NAMED.items():
        assert f"{name}: {cls.stored_name}/v{cls.version}" in res.out
    assert proto.NAMESPACE in res.out


def test_scores_pair_a_papers_protocol_with_its_cells_without_augmentation_which_are_starred():
    from ddbench.analysis import scores
    from ddbench.analysis.results import CellId, Sample, Table

    on = {"name": "dsa-eval", "version": 1, "dsa": True, "epochs": 1000}
    cell = CellId("digits", "clean", "1", "convnet")
    tables = []
    for label, params, acc in (("dsa-eval/v1", on, {"random": 0.5, "dm": 0.7}),
                               ("dsa-eval/v1*", {**on, "dsa": False}, {"random": 0.4, "dm": 0.5})):
        t = Table(label, "h", params, "env", ["random", "dm"])
        t.cells[cell] = {m: Sample(values={0: a, 1: a}) for m, a in acc.items()}
        tables.append(t)
    (s,) = scores.compute(tables)
    assert s.ars is not None and s.ars[0] == pytest.approx(scores.normalise(0.5 * 0.2 + 0.5 * 0.1))
