"""The named evaluation protocols: each paper's own beside the uniform one, chosen per method
by the paper preset, stored under their own names, compared only with their own numbers."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, rows

from ddbench.evaluation import protocol as proto
from ddbench.evaluation.protocol import Protocol, ProtocolParams
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
    assert row["protocol"] == "dc-eval/v1"
    params = json.loads(row["protocol_params"])
    assert params["name"] == "dc-eval" and params["dsa"] is False and params["dc_aug"] == "crop_noise"
    assert calls and set(calls) == {"crop_noise"}
    assert "dc-eval/v1" in res.out  # the table footer names the protocol


def test_check_compares_a_published_number_with_its_protocol_only(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    for choice in ("uniform", "dc"):
        res = ddb("run", "--methods", "random", "--ipc", "1", "--seeds", "0", "--store", str(store),
                  "--set", f"eval.protocol={choice}", *TINY)
        assert res.code == 0, res.err
    by_protocol = {r["protocol"]: 100 * r["accuracy"] for r in rows(store)}
    csv = tmp_path / "published.csv"
    head = "method,dataset,conditions,ipc,model,mean,std,n,labels,protocol\n"
    csv.write_text(head + f"random,digits,clean,1,convnet,{by_protocol['dc-eval/v1']:.2f},0.1,5,hard,dc-eval\n")
    res = ddb("check", str(csv), "--store", str(store))
    assert res.code == 0, res.out + res.err
    assert f"{by_protocol['dc-eval/v1']:.1f}" in res.out
    # without the protocol the number could be either: refused as ambiguous
    csv.write_text(head + f"random,digits,clean,1,convnet,{by_protocol['dc-eval/v1']:.2f},0.1,5,hard,\n")
    res = ddb("check", str(csv), "--store", str(store))
    assert res.code == 2 and "two protocols" in res.err
    # a local copy compared under the published name; a bad alias is a one-line error
    res = ddb("check", str(csv), "--store", str(store), "--dataset-as", "digits")
    assert res.code == 2 and "malformed --dataset-as 'digits'" in res.err
    res = ddb("check", str(csv), "--store", str(store), "--dataset-as", "mnist=cifar10")
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
