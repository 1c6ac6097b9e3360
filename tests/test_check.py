"""`ddbench check`: baselines from runs, regressions, noise, missing cells, malformed files,
and the tracked baselines (published numbers, the CI baseline) themselves."""

from __future__ import annotations

import configparser
import json
import math
import shlex
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY, rows
from scipy import stats as st
from test_protocols import QUICK, RANDOM, published
from test_report import fixed_store

from ddbench.analysis import baselines, stats

BASELINES = REPO / "results" / "baselines"


@pytest.fixture
def store(tmp_path):
    return fixed_store(tmp_path / "r.sqlite")


def shift(store: Path, method: str, dataset: str, ipc: int, by: float) -> None:
    db = sqlite3.connect(store)
    with db:
        db.execute("UPDATE results SET accuracy = accuracy + ? WHERE method=? AND dataset=? AND ipc=?",
                   (by, method, dataset, ipc))
    db.close()


def test_shortfall_is_welchs_one_sided_t_on_the_shifted_difference():
    rng = np.random.default_rng(1)
    ours, base = rng.normal(90, 1.0, 4), rng.normal(91, 2.0, 6)
    for tol in (0.0, 1.0, 3.0):
        got = stats.shortfall((4, ours.mean(), ours.std(ddof=1)), (6, base.mean(), base.std(ddof=1)), tol)
        want = st.ttest_ind(ours + tol, base, equal_var=False, alternative="less")
        assert got.p == pytest.approx(want.pvalue, rel=1e-9)
        assert got.df == pytest.approx(want.df, rel=1e-9)
    # a side without spread borrows the other's; unknown n is taken as ASSUMED_N; nothing known: no test
    borrowed = stats.shortfall((1, 80.0, math.nan), (3, 90.0, 1.0), 1.0)
    assert borrowed.tested and borrowed.df == 2 and "borrowed" in borrowed.note
    assert borrowed.se == pytest.approx(math.sqrt(1 / 1 + 1 / 3))
    assert "assumed 5" in stats.shortfall((3, 90, 1), (None, 90, 1), 1).note
    assert not stats.shortfall((1, 90, math.nan), (1, 91, math.nan), 1).tested
    # no spread at all: decided by the tolerance alone
    assert stats.shortfall((3, 90, 0.0), (3, 92, 0.0), 1.0).p == 0.0
    assert stats.shortfall((3, 90, 0.0), (3, 90.5, 0.0), 1.0).p == 1.0


def test_a_baseline_from_a_run_checks_clean_against_that_run(ddb, tmp_path):
    s = str(tmp_path / "r.sqlite")
    r = ddb("run", "--methods", "random,dm", "--datasets", "digits", "--ipc", "1", "--seeds", "0,1",
            "--store", s, *TINY)
    assert r.code == 0, r.err
    b = tmp_path / "b.json"
    r = ddb("check", str(b), "--update", "--store", s)
    assert r.code == 0, r.err
    assert "2 cell(s); 2 new" in r.out
    doc = json.loads(b.read_text())
    assert doc["commands"][0].startswith("ddbench run --methods random,dm")
    assert doc["protocol"]["hash"] and doc["environment"]["versions"]["torch"]
    assert {c["method"] for c in doc["cells"]} == {"random", "dm"}
    assert all(c["n"] == 2 and len(c["values"]) == 2 for c in doc["cells"])
    r = ddb("check", str(b), "--store", s, "--strict")
    assert r.code == 0, r.out + r.err
    assert "PASSED: 2 cell(s)" in r.out and "REGRESSION" not in r.out


def test_an_injected_drop_beyond_the_tolerance_fails_and_one_within_noise_passes(ddb, store, tmp_path):
    b = str(tmp_path / "b.json")
    assert ddb("check", b, "--update", "--store", str(store), "--tolerance", "1").code == 0
    assert ddb("check", b, "--store", str(store)).code == 0
    shift(store, "a", "digits", 1, -0.05)  # 5 pp below, seed std ~0.3 pp
    shift(store, "c", "mnist", 10, -0.005)  # 0.5 pp: inside the tolerance
    r = ddb("check", b, "--store", str(store))
    assert r.code == 1, r.out
    lines = [ln for ln in r.out.splitlines() if "REGRESSION" in ln]
    assert len(lines) == 1 and lines[0].split()[:4] == ["a", "digits", "1", "convnet"]
    assert "FAILED: 1 regression(s) over 20 compared cell(s)" in r.out
    assert "a digits/ipc1/convnet: -5.0 pp" in r.out
    # the same 5 pp drop is within a 6 pp tolerance
    assert ddb("check", b, "--store", str(store), "--tolerance", "6").code == 0


def test_a_drop_beyond_the_tolerance_but_within_noise_passes(ddb, store, tmp_path):
    b = tmp_path / "b.json"
    assert ddb("check", str(b), "--update", "--store", str(store)).code == 0
    doc = json.loads(b.read_text())
    cell = next(c for c in doc["cells"] if (c["method"], c["dataset"], c["ipc"]) == ("b", "mnist", "10"))
    # a noisy baseline (std ~6 pp over 3 seeds) 2 pp above ours: beyond 1 pp, not significant
    cell["values"] = {k: v + d for (k, v), d in zip(cell["values"].items(), (-4, 2, 8), strict=True)}
    cell["mean"] = float(np.mean(list(cell["values"].values())))
    b.write_text(json.dumps(doc))
    r = ddb("check", str(b), "--store", str(store))
    assert r.code == 0, r.out
    line = next(ln for ln in r.out.splitlines() if ln.startswith("b ") and " mnist " in ln and " 10 " in ln)
    assert "within noise" in line and "-2.0" in line


def test_missing_cells_are_listed_and_fail_only_when_strict(ddb, store, tmp_path):
    b = str(tmp_path / "b.json")
    assert ddb("check", b, "--update", "--store", str(store), "--datasets", "digits").code == 0
    r = ddb("check", b, "--store", str(store))  # mnist cells: not in the baseline
    assert r.code == 0 and "10 cell(s) in these results but not in the baseline" in r.out
    assert "  a mnist/ipc1/convnet" in r.out
    r = ddb("check", b, "--store", str(store), "--strict")
    assert r.code == 1 and "FAILED: 10 missing in the baseline" in r.out
    r = ddb("check", b, "--store", str(store), "--methods", "a,b", "--strict")
    assert r.code == 1 and "4 cell(s) in these results" in r.out
    # results filtered away are missing here
    r = ddb("check", b, "--store", str(store), "--ipc", "1", "--datasets", "digits", "--strict")
    assert r.code == 0  # the filters scope the baseline too
    r = ddb("check", b, "--store", str(store), "--datasets", "mnist")
    assert r.code == 1 and "no cell in common" in r.out


def test_update_keeps_the_files_settings_and_refuses_published_tables(ddb, store, tmp_path):
    b = tmp_path / "b.json"
    assert ddb("check", str(b), "--update", "--store", str(store), "--tolerance", "2.5").code == 0
    doc = json.loads(b.read_text())
    doc["description"] = "kept"
    b.write_text(json.dumps(doc))
    r = ddb("check", str(b), "--update", "--store", str(store), "--methods", "a")
    assert r.code == 0 and "4 cell(s); 0 new, 16 removed, 0 with a changed mean" in r.out
    doc = json.loads(b.read_text())
    assert doc["description"] == "kept" and doc["tolerance_pp"] == 2.5
    r = ddb("check", str(BASELINES / "reported.csv"), "--update", "--store", str(store))
    assert r.code == 2 and "never rewritten from a run" in r.err


def test_update_merge_gathers_a_baseline_over_several_runs(ddb, store, tmp_path):
    b = tmp_path / "b.json"
    assert ddb("check", str(b), "--update", "--store", str(store), "--datasets", "digits").code == 0
    doc = json.loads(b.read_text())
    assert doc["presets"] == ["small"]  # the producing runs' preset is recorded
    cell = next(c for c in doc["cells"] if (c["method"], c["ipc"]) == ("a", "1"))
    want = dict(cell["values"])
    # an earlier run's file: seed 2 not run yet, seed 0 from other code; and a cell of another store
    cell["values"] = {"0": want["0"] - 5, "1": want["1"]}
    cell.update(n=2, mean=sum(cell["values"].values()) / 2)
    doc["cells"].append({**cell, "method": "z", "values": {"0": 50.0, "1": 52.0}, "mean": 51.0})
    doc["commands"] = ["ddbench run --earlier"]
    b.write_text(json.dumps(doc))
    r = ddb("check", str(b), "--update", "--merge", "--store", str(store), "--datasets", "digits", "--methods", "a")
    assert r.code == 0, r.err
    assert "0 new, 0 removed, 1 with a changed mean; 5 unit value(s) present before, 1 of them different" in r.out
    got = json.loads(b.read_text())
    cells = {(c["method"], c["ipc"]): c for c in got["cells"]}
    assert len(cells) == len(doc["cells"])  # b, c, b+x... and z kept
    assert cells["a", "1"]["values"] == want and cells["a", "1"]["n"] == 3
    assert cells["a", "1"]["mean"] == pytest.approx(np.mean(list(want.values())), abs=1e-3)
    assert cells["z", "1"]["values"] == {"0": 50.0, "1": 52.0}
    assert got["commands"][0] == "ddbench run --earlier" and len(got["commands"]) == 2
    # without --merge the file is the selection alone
    r = ddb("check", str(b), "--update", "--store", str(store), "--datasets", "digits", "--methods", "a")
    assert r.code == 0 and len(json.loads(b.read_text())["cells"]) == 2
    # values under another protocol do not pool; --merge alone says what it needs
    doc["protocol"]["hash"] = "ffff"
    b.write_text(json.dumps(doc))
    r = ddb("check", str(b), "--update", "--merge", "--store", str(store), "--datasets", "digits")
    assert r.code == 2 and "built under protocol #ffff" in r.err and "do not pool" in r.err
    assert json.loads(b.read_text())["protocol"]["hash"] == "ffff"  # nothing written
    r = ddb("check", str(b), "--merge", "--store", str(store))
    assert r.code == 2 and "--merge only goes with --update" in r.err


def test_protocol_mismatch_is_an_error(ddb, store, tmp_path):
    b = tmp_path / "b.json"
    assert ddb("check", str(b), "--update", "--store", str(store)).code == 0
    doc = json.loads(b.read_text())
    doc["protocol"]["hash"] = "ffff"
    b.write_text(json.dumps(doc))
    r = ddb("check", str(b), "--store", str(store))
    assert r.code == 2 and "no results under the baseline's protocol #ffff" in r.err


GOOD_CELL = {"method": "a", "dataset": "digits", "ipc": "1", "model": "convnet", "mean": 90.0}


@pytest.mark.parametrize(("name", "text", "message"), [
    ("b.json", "{not json", "not valid JSON"),
    ("b.json", json.dumps({"cells": [GOOD_CELL]}), "expected \"format\""),
    ("b.json", json.dumps({"format": baselines.FORMAT, "cells": []}), "non-empty list of cells"),
    ("b.json", json.dumps({"format": baselines.FORMAT, "cells": [{**GOOD_CELL, "mean": "high"}]}),
     "cell 0): mean 'high' is not a number"),
    ("b.json", json.dumps({"format": baselines.FORMAT, "cells": [{**GOOD_CELL, "mean": 0.9e3}]}),
     "accuracies are percentages"),
    ("b.json", json.dumps({"format": baselines.FORMAT, "cells": [GOOD_CELL, GOOD_CELL]}), "duplicate cell"),
    ("b.json", json.dumps({"format": baselines.FORMAT, "cells": [{**GOOD_CELL, "ipc": "-3"}]}),
     "ipc '-3' must be a positive integer"),
    ("b.json", json.dumps({"format": baselines.FORMAT, "cells": [{**GOOD_CELL, "n": 3, "values": {"0": 90}}]}),
     "n = 3 but 1 values"),
    ("b.csv", "method,dataset,ipc,model,mean,colour\ndm,digits,1,convnet,90,red\n", "unknown column(s) colour"),
    ("b.csv", "method,dataset,ipc,model\ndm,digits,1,convnet\n", "missing column(s) mean"),
    ("b.csv", "method,dataset,ipc,model,mean,labels\ndm,digits,1,convnet,90,fuzzy\n",
     "row 2): labels 'fuzzy'; valid choices: hard, soft"),
    ("b.csv", "method,dataset,ipc,model,mean\ndm,digits,1,convnet,90,1\n", "more fields than columns"),
    ("b.yaml", "a: 1\n", "unknown format '.yaml'; valid choices: .csv, .json"),
])
def test_a_malformed_baseline_is_a_one_line_error(ddb, store, tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    r = ddb("check", str(path), "--store", str(store))
    assert r.code == 2 and message in r.err, r.err
    assert r.err.count("\n") == 1 and r.out == ""


def test_a_missing_baseline_or_store_is_an_error(ddb, store, tmp_path):
    r = ddb("check", str(tmp_path / "none.json"), "--store", str(store))
    assert r.code == 2 and "does not exist" in r.err
    r = ddb("check", str(BASELINES / "reported.csv"), "--store", str(tmp_path / "none.sqlite"))
    assert r.code == 2 and "does not exist" in r.err


def test_published_numbers_unverified_rows_never_fail(ddb, tmp_path):
    csv_path = tmp_path / "paper.csv"
    csv_path.write_text("# tolerance_pp: 0.5\nmethod,dataset,ipc,model,mean,std,n,labels,verified\n"
                        "a,digits,1,convnet,99.0,0.1,5,hard,no\n"
                        "b,digits,1,convnet,99.0,0.1,5,soft,yes\n"
                        "c,digits,1,convnet,40.0,1.0,,hard,yes\n")
    store = fixed_store(tmp_path / "r.sqlite")
    r = ddb("check", str(csv_path), "--store", str(store))
    lines = {ln.split()[0]: ln for ln in r.out.splitlines() if ln[:2] in ("a ", "b ", "c ")}
    assert "below (unverified)" in lines["a"] and "(unverified) (unverified)" not in lines["a"]
    # a soft-label number is never compared with hard-label results: b has no results to compare
    assert "b" not in lines and "b digits/ipc1/convnet" in r.out
    assert lines["c"].rstrip().endswith("ok") and "(n=?)" in lines["c"]
    assert "baseline n assumed 5" in r.out and "0.5 pp" in r.out
    assert r.code == 0 and "PASSED: 2 cell(s)" in r.out


def test_a_published_number_is_never_compared_with_its_protocol_at_other_values(fake_plugin, ddb, tmp_path):
    fake_plugin("quick", QUICK)
    store = tmp_path / "r.sqlite"
    for ipc, sets in (("1", []), ("2", ["--set", "eval.epochs=3"])):
        res = ddb("run", *RANDOM, "--ipc", ipc, "--set", "eval.protocol=quick", *sets, "--store", str(store))
        assert res.code == 0, res.err
    mean = sum(100 * r["accuracy"] for r in rows(store, "ipc=1")) / 2
    csv = published(tmp_path / "p.csv", mean, "quick-eval")
    csv_text = Path(csv).read_text()
    Path(csv).write_text(csv_text + csv_text.splitlines()[-1].replace(",1,convnet,", ",2,convnet,") + "\n")
    res = ddb("check", csv, "--store", str(store))
    assert res.code == 0 and "PASSED: 1 cell(s)" in res.out, res.out
    assert "1 cell(s) in the baseline not compared, their results here not under the published protocol:" in res.out
    assert "  random digits/ipc2/convnet: only under quick-eval/v1* (epochs=3): not the published protocol" in res.out
    res = ddb("check", csv, "--store", str(store), "--strict")
    assert res.code == 1 and "FAILED: 1 not comparable over 1 compared cell(s)" in res.out
    res = ddb("report", "--store", str(store))
    assert "protocol quick-eval/v1 #" in res.out and "protocol quick-eval/v1* #" in res.out
    assert ("quick-eval/v1* (overrides: epochs=3 (quick-eval: 2)): not the published protocol, "
            "never checked against its numbers") in res.out


def test_cells_pool_across_num_eval_and_rows_stored_before_the_star_are_judged_by_their_values(
        fake_plugin, ddb, tmp_path):
    fake_plugin("quick", QUICK)
    store = tmp_path / "r.sqlite"
    quick = [*RANDOM, "--set", "eval.protocol=quick", "--store", str(store)]
    assert ddb("run", *quick, "--set", "eval.num_eval=1").code == 0
    (first,) = rows(store)
    assert first["protocol"] == "quick-eval/v1*"
    csv = published(tmp_path / "p.csv", 100 * first["accuracy"], "quick-eval")
    res = ddb("check", csv, "--store", str(store))
    assert res.code == 1 and "only under quick-eval/v1* (num_eval=1): not the published protocol" in res.out
    assert "FAILED: no cell compared; the results here are not under the published protocols" in res.out
    # the published run finds its first network stored (num_eval is outside the keys) and adds the
    # second: the two pool as the published protocol's two networks, whatever their stored labels
    assert ddb("run", *quick).code == 0
    assert sorted(r["protocol"] for r in rows(store)) == ["quick-eval/v1", "quick-eval/v1*"]
    report = ddb("report", "--store", str(store)).out
    assert "quick-eval/v1*" not in report and "(n=2)" in report and "num_eval=2" in report
    res = ddb("check", csv, "--store", str(store), "--strict")
    assert res.code == 0 and "PASSED: 1 cell(s)" in res.out, res.out
    # another set evaluated by one network only stays starred beside them
    assert ddb("run", *quick, "--seeds", "1", "--set", "eval.num_eval=1").code == 0
    report = ddb("report", "--store", str(store)).out
    assert "protocol quick-eval/v1 #" in report and "quick-eval/v1* (overrides: num_eval=1 (quick-eval: 2))" in report
    res = ddb("check", csv, "--store", str(store), "--strict")
    assert res.code == 0 and "(n=2)" in res.out and "not compared" not in res.out, res.out
    # 1-network rows as an earlier ddbench stored them, unstarred: judged by their stored values
    db = sqlite3.connect(store)
    with db:
        db.execute("DELETE FROM results WHERE eval_index = 1")
        db.execute("UPDATE results SET protocol = 'quick-eval/v1'")
    db.close()
    res = ddb("check", csv, "--store", str(store))
    assert res.code == 1 and "only under quick-eval/v1* (num_eval=1): not the published protocol" in res.out
    assert "quick-eval/v1* (overrides: num_eval=1 (quick-eval: 2))" in ddb("report", "--store", str(store)).out


def test_the_published_table_holds_the_reference_numbers():
    b = baselines.load(BASELINES / "reported.csv")
    assert b.kind == "reported" and b.tolerance_pp == 2.0

    def cell(method, dataset, ipc, conditions="clean", model="convnet"):
        return b.cells[baselines.Key(dataset, conditions, str(ipc), model, method)]

    assert (cell("dc", "mnist", 1).mean, cell("dc", "mnist", 1).std, cell("dc", "mnist", 1).n) == (91.7, 0.5, 100)
    assert cell("dsa", "cifar10", 10).mean == 52.1 and cell("dm", "cifar10", 50).mean == 63.0
    mtt = cell("mtt", "cifar10", 10, "zca")
    assert (mtt.mean, mtt.std, mtt.n, mtt.verified) == (65.3, 0.7, 5, True)
    assert cell("mtt", "cifar100", 10).mean == 40.1
    assert cell("datm", "cifar10", 10).labels == "soft" and cell("dm", "cifar10", 10).labels == "hard"
    assert not cell("mtt+mim", "cifar10", 10, "zca").verified
    assert not cell("mtt", "cifar10", 10, "zca", "resnet18").verified
    assert cell("full", "cifar10", "all").mean == 84.8
    assert cell("ld", "mnist", 10, model="alexnet").mean == 87.3
    # every DC/DSA low-resolution number of REFERENCE 10.1
    assert sum(1 for k in b.cells if k.method in ("dc", "dsa") and k.ipc in ("1", "10", "50")
               and k.model == "convnet" and k.dataset != "tinyimagenet") == 29
    # a protocol is named only for a paper's own number of its own method; later papers' runs
    # (IPC 500/1000, DSA on CIFAR-100 IPC 50, another paper's cross-architecture runs) name none
    assert {c.protocol for c in b.cells.values() if c.protocol} == {"dc-eval", "dsa-eval", "dm-eval", "mtt-eval"}
    assert all(c.protocol == f"{k.method}-eval" for k, c in b.cells.items() if c.protocol)
    assert cell("dc", "mnist", 1).protocol == "dc-eval" and cell("mtt", "cifar10", 1, "zca").protocol == "mtt-eval"
    assert not any(cell(m, "cifar10", ipc).protocol for m in ("dc", "dsa", "dm") for ipc in (500, 1000))
    assert not cell("dsa", "cifar100", 50).protocol and not cell("mtt", "cifar100", 100).protocol
    assert not cell("dsa", "cifar10", 10, model="resnet18").protocol


def _tox_sweep() -> list[str]:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(REPO / "tox.ini")
    lines = [ln.strip() for ln in ini["testenv:regression"]["commands"].splitlines() if ln.strip()]
    return [shlex.split(ln) for ln in lines]


def _without(argv: list[str], options=("--store", "--data-root")) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif a != "--quiet":
            out.append(a)
    return out


def test_the_ci_baseline_is_what_the_ci_sweep_runs():
    """The CPU baseline must come from exactly the sweep that CI checks against it."""
    run, check = _tox_sweep()
    b = baselines.load(BASELINES / "cpu-digits.json")
    assert len(b.meta["commands"]) == 1
    assert _without(shlex.split(b.meta["commands"][0])) == _without(run)
    assert check[:3] == ["ddbench", "check", "results/baselines/cpu-digits.json"] and "--strict" in check
    assert b.protocol_hash and b.meta["environment"]["versions"]["torch"].startswith("2.14")
    assert {k.method for k in b.cells} >= {"random", "dc", "dsa", "dm", "mtt", "dm+mim", "mtt+mim", "mim"}
