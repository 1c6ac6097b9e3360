"""The named evaluation protocols: each paper's own beside the uniform one, chosen per method
by the paper preset, stored under their own names, compared only with their own numbers."""

from __future__ import annotations

import json
from typing import get_args

import pytest
from conftest import TINY, rows

from ddbench.builtins import protocols
from ddbench.evaluation import protocol as proto
from ddbench.evaluation.protocol import Protocol, ProtocolParams


def test_the_protocol_field_lists_every_named_protocol():
    import typing

    hints = typing.get_type_hints(ProtocolParams)
    assert set(get_args(hints["protocol"])) == set(protocols.CHOICES)


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
    out = protocols.specialise(base, protocols.named("dc"), explicit, dataset, model, {"norm": norm})
    assert (out.dsa, out.dc_aug, out.epochs, out.num_eval) == (False, want_aug, want_epochs, 20)


def test_preset_and_set_values_win_over_a_named_protocol():
    base = ProtocolParams(num_eval=3)
    out = protocols.specialise(base, protocols.named("dsa"), {"num_eval"}, "mnist", "convnet", {})
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
    for named in protocols.NAMED.values():
        assert f"{named.key}: {named.name}/v{named.version}" in res.out
    assert proto.NAMESPACE in res.out
