"""`ddbench report` / `compare` and the plots on a fixed store written row by row."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats as st

from ddbench.analysis import plots, report, results, stats
from ddbench.analysis.cost_table import cost_table
from ddbench.storage.records import ResultRow, RunRow, SynsetRow
from ddbench.storage.store import Store

EXPECTED = Path(__file__).parent / "data" / "report_fixed.tex"
PROTOCOL = {"name": "ddbench-eval", "version": 1, "epochs": 300, "lr": 0.01}
VERSIONS = {"ddbench": "0.1.0", "torch": "2.14.1+cpu"}
# method -> mean accuracy by ipc; "c" is far below, "b+x[w=...]" a sweep of one parameter
MEANS = {"a": {1: 0.90, 10: 0.95}, "b": {1: 0.89, 10: 0.951}, "c": {1: 0.60, 10: 0.80},
         "b+x[w=0.5]": {1: 0.895, 10: 0.95}, "b+x[w=1.0]": {1: 0.88, 10: 0.948}}


def _row(i, method, dataset, ipc, seed, ev, acc, protocol_hash="p1" * 8, versions=VERSIONS,
         status="ok", params=None):
    dk = f"{method}-{dataset}-{ipc}-{seed}-{protocol_hash[:2]}-{versions['torch']}"
    return ResultRow(f"{dk}-{ev}", distill_key=dk, run_id="run000000001", method=method,
                     params=json.dumps(params or {method.split("[")[0]: {}}), dataset=dataset,
                     conditions="clean", ipc=ipc, seed=seed, model="convnet", model_params="{}",
                     eval_index=ev, protocol="ddbench-eval/v1", protocol_hash=protocol_hash,
                     protocol_params=json.dumps(PROTOCOL), status=status,
                     accuracy=acc if status == "ok" else None, error=None if status == "ok" else "boom",
                     device="cpu", versions=json.dumps(versions))


def fixed_store(path: Path) -> Path:
    """2 datasets x 2 IPC x 5 methods x 3 seeds x 2 evaluation runs, deterministic."""
    rng = np.random.default_rng(0)
    st_ = Store(path)
    st_.start_run(RunRow("run000000001", command="ddbench run ...", preset="small",
                         versions=json.dumps(VERSIONS), git_rev="abc"))
    grid = path.parent / "artifacts" / "g.png"
    grid.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(grid)
    i = 0
    for dataset, shift in (("digits", 0.0), ("mnist", 0.02)):
        for ipc in (1, 10):
            for method, means in MEANS.items():
                for seed in range(3):
                    for ev in range(2):
                        acc = means[ipc] + shift + rng.normal(0, 0.004)
                        st_.write_result(_row(i, method, dataset, ipc, seed, ev, round(acc, 4)))
                        i += 1
                    dk = f"{method}-{dataset}-{ipc}-{seed}-p1-2.14.1+cpu"
                    trace = ({"mim/mi_l1": [(s, -1 + 0.01 * s + 0.01 * seed) for s in range(5)],
                              "mim/ceiling": [(s, math.log(10)) for s in range(5)]}
                             if "+x" in method else None)
                    st_.write_synset(SynsetRow(dk, run_id="run000000001", method=method,
                                               dataset=dataset, conditions="clean", ipc=ipc, seed=seed,
                                               status="ok", grid="artifacts/g.png", iterations=10,
                                               seconds_per_iter=0.1 * ipc * (2 if "+x" in method else 1),
                                               peak_mem_mb=500 + ipc, device="cpu", num_classes=10),
                                     trace=trace)
    st_.write_result(_row(i, "c", "digits", 1, 5, 0, None, status="failed"))
    st_.close()
    return path


@pytest.fixture
def store(tmp_path):
    return fixed_store(tmp_path / "r.sqlite")


def analysis(path: Path, **filters) -> report.Analysis:
    st_ = Store(path)
    try:
        return report.analyse(results.group(results.load_rows(st_, results.Filters(**filters)), {}))
    finally:
        st_.close()


def test_latex_matches_the_stored_expected_text(store):
    text = report.render_latex(analysis(store))
    if not EXPECTED.exists():  # pragma: no cover - first run writes the reference
        EXPECTED.parent.mkdir(exist_ok=True)
        EXPECTED.write_text(text)
    assert text == EXPECTED.read_text()
    assert "\\toprule" in text and "\\textbf{" in text and "$^\\dagger$" in text


def test_cells_agree_with_numpy_and_tests_with_scipy(store):
    an = analysis(store)
    assert len(an.tables) == 1
    table = an.tables[0]
    cell = results.CellId("digits", "clean", "1", "convnet")
    s = table.cells[cell]["a"]
    assert s.unit == results.SEED and sorted(s.values) == [0, 1, 2] and s.failed == 0
    assert table.cells[cell]["c"].failed == 1
    recs = list(csv.DictReader(io.StringIO(report.render_csv(an))))
    assert len(recs) == 2 * 2 * 5
    rec = next(r for r in recs if (r["dataset"], r["ipc"], r["method"]) == ("digits", "1", "a"))
    assert float(rec["mean"]) == pytest.approx(np.mean(list(s.values.values())), rel=1e-5)
    assert float(rec["std"]) == pytest.approx(np.std(list(s.values.values()), ddof=1), rel=1e-4)
    doc = json.loads(report.render_json(an))
    comp = next(c for c in doc["comparisons"]
                if (c["dataset"], c["ipc"], c["a"], c["b"]) == ("digits", "1", "a", "c"))
    sc = table.cells[cell]["c"].values
    assert comp["paired"] and comp["p_t"] == pytest.approx(
        st.ttest_rel([s.values[k] for k in (0, 1, 2)], [sc[k] for k in (0, 1, 2)]).pvalue)
    assert doc["holm_family"] == 4 * 10  # 4 cells x C(5, 2) pairs
    ps = [c["p_t"] for c in doc["comparisons"]]
    assert [c["p_holm"] for c in doc["comparisons"]] == pytest.approx(stats.holm(ps))
    assert doc["rank_tests"] and doc["rank_tests"][0]["n_blocks"] == 4


def test_markers_and_summary(store):
    an = analysis(store)
    md = report.render_markdown(an)
    assert "**90." in md or "**95." in md  # a best entry in bold
    assert "| 59.6 ± 0.2 † (n=3) [1 failed] |" in md  # c is far below the best
    summary = report.significance_summary(an)
    assert "significance:" in summary and "> c on digits/ipc1/convnet" in summary
    assert "p_holm < 0.001 (paired t, n = 3 vs 3)" in summary
    text = report.render_text(an)
    assert "unit of replication: distillation seed" in text and "protocol ddbench-eval/v1" in text
    assert "Friedman" in text


def test_protocols_and_library_versions_are_never_pooled(tmp_path):
    path = fixed_store(tmp_path / "r.sqlite")
    st_ = Store(path)
    st_.write_result(_row(0, "a", "digits", 1, 0, 0, 0.5, protocol_hash="p2" * 8))
    st_.write_result(_row(0, "a", "digits", 1, 0, 0, 0.4, versions={"ddbench": "0.1.0", "torch": "2.11.0"}))
    st_.close()
    an = analysis(path)
    assert len(an.tables) == 3
    envs = sorted((t.protocol_hash[:2], t.env) for t in an.tables)
    assert envs == [("p1", "ddbench 0.1.0, torch 2.11"), ("p1", "ddbench 0.1.0, torch 2.14"),
                    ("p2", "ddbench 0.1.0, torch 2.14")]
    text = report.render_text(an)
    assert text.count("protocol ddbench-eval/v1 #") == 3


def test_one_seed_uses_evaluation_runs_and_too_few_runs_are_not_tested(tmp_path):
    st_ = Store(tmp_path / "r.sqlite")
    for ev, (x, y) in enumerate([(0.9, 0.8), (0.91, 0.82), (0.92, 0.81)]):
        st_.write_result(_row(ev, "a", "digits", 1, 0, ev, x))
        st_.write_result(_row(ev, "b", "digits", 1, 0, ev, y))
    st_.write_result(_row(0, "c", "digits", 1, 0, 0, 0.7))
    st_.close()
    an = analysis(tmp_path / "r.sqlite")
    table = an.tables[0]
    assert {s.unit for s in next(iter(table.cells.values())).values()} == {results.EVAL}
    ab = next(c for c in an.comparisons if (c.a, c.b) == ("a", "b"))
    assert ab.paired and ab.tested
    ac = next(c for c in an.comparisons if (c.a, c.b) == ("a", "c"))
    assert not ac.tested and math.isnan(ac.p_holm)
    assert "not tested (too few runs for a test)" in report.significance_summary(an)
    assert "evaluation run (one distillation seed per method)" in report.render_text(an)


def test_same_label_different_parameters_are_told_apart(tmp_path):
    st_ = Store(tmp_path / "r.sqlite")
    st_.write_result(_row(0, "dm", "digits", 1, 0, 0, 0.9, params={"dm": {"lr_img": 1.0}}))
    row = _row(0, "dm", "digits", 1, 1, 0, 0.8, params={"dm": {"lr_img": 0.1}})
    st_.write_result(row)
    st_.close()
    assert analysis(tmp_path / "r.sqlite").tables[0].methods == ["dm [dm.lr_img=1.0]", "dm [dm.lr_img=0.1]"]


def test_cost_table_keeps_variants_of_one_method_apart():
    def synset(seed, amp, spi, mem):
        params = {"dm": {"amp": amp}} if amp else {"dm": {}}
        return SynsetRow(f"dm-{amp}-{seed}", method="dm", params=json.dumps(params),
                         dataset="mnist", conditions="clean", ipc=1, seed=seed, status="ok",
                         seconds_per_iter=spi, seconds=spi * 50, cpu_seconds=spi * 50,
                         peak_mem_mb=mem, device="cpu", num_classes=10 if seed == 0 else None)

    # float32 rows store no amp (its neutral value is a late parameter), bf16 rows do
    rows = [synset(0, None, 2.0, 1500), synset(1, None, 4.0, 1600), synset(0, "bf16", 1.0, 1400)]
    lines = cost_table(rows, {"dm": {"amp": "off"}}).splitlines()[2:]
    # method (two words), dataset, classes, ipc, s/iter, wall s, cpu s, peak MB, sets, device
    assert [line.split() for line in lines] == [
        ["dm", "[dm.amp=bf16]", "mnist", "10", "1", "1", "50", "50", "1400", "1", "cpu"],
        ["dm", "[dm.amp=off]", "mnist", "10", "1", "3", "150", "150", "1600", "2", "cpu"]]


def test_report_cli_formats_filters_and_files(store, ddb, tmp_path):
    res = ddb("report", "--store", str(store), "--datasets", "mnist", "--methods", "a,b+x", "--cost")
    assert res.code == 0, res.err
    assert "digits" not in res.out and "b+x[w=0.5]" in res.out and " c " not in res.out
    assert "distillation cost" in res.out and "s/iter" in res.out
    out = tmp_path / "t.tex"
    assert ddb("report", "--store", str(store), "--format", "latex", "-o", str(out)).code == 0
    assert out.read_text().startswith("\\begin{table}")
    assert ddb("report", "--store", str(store), "--run", "run0").code == 0
    bad = ddb("report", "--store", str(store), "--run", "zzz")
    assert bad.code == 2 and "--run 'zzz' matches no run" in bad.err and "run000000001" in bad.err
    missing = ddb("report", "--store", str(tmp_path / "none.sqlite"))
    assert missing.code == 2 and "does not exist" in missing.err
    assert not (tmp_path / "none.sqlite").exists()
    fmt = ddb("report", "--store", str(store), "--format", "xml")
    assert fmt.code == 2 and "'xml'" in fmt.err and "latex" in fmt.err


def test_compare_cli(store, ddb):
    res = ddb("compare", "a", "c", "--store", str(store))
    assert res.code == 0, res.err
    assert res.out.count("paired t") == 4
    assert "a has the higher mean in 4 of 4 shared cell(s); significantly better in 4" in res.out
    assert "too few shared cells" in res.out
    bad = ddb("compare", "a", "zz", "--store", str(store))
    assert bad.code == 2 and "method 'zz' has no results" in bad.err and "b+x[w=0.5]" in bad.err


def test_plots_are_written_with_an_index(store, tmp_path):
    out = tmp_path / "plots"
    st_ = Store(store)
    try:
        figs = plots.write_all(analysis(store), st_, out)
    finally:
        st_.close()
    names = {f.name for f in figs}
    assert {"accuracy_vs_ipc", "sensitivity", "mi_traces", "critical_difference", "cost"} <= names
    assert any(n.startswith("grid_") for n in names)
    for name, size in (("accuracy_vs_ipc", (2 * 504, 384)), ("cost", (1080, 768))):
        img = Image.open(out / f"{name}.png")
        assert img.size == size
        assert len(img.convert("L").getcolors(maxcolors=1 << 16) or []) > 20  # not blank
        assert (out / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
    # the sensitivity plot has one panel per cell for the single swept parameter
    assert Image.open(out / "sensitivity.png").size == (3 * 504, 2 * 384)
    index = (out / "index.md").read_text()
    assert all(f"({f.name}.png)" in index for f in figs)
    assert "<img src='accuracy_vs_ipc.png'" in (out / "index.html").read_text()


def test_cost_axes_start_at_zero(tmp_path, monkeypatch):
    """Peak memory that varies by 0.07 MB is flat, not a trend: cost axes start at zero."""
    from ddbench.analysis import plots

    kept = []
    monkeypatch.setattr(plots, "_save", lambda fig, out, name, tight=False: kept.append(fig))
    rows = [SynsetRow(f"k{ipc}{seed}", method="dm", dataset="digits", ipc=ipc, seed=seed, status="ok",
                      seconds_per_iter=0.4 + 0.001 * seed, peak_mem_mb=930.0 + 0.03 * seed, device="cpu",
                      num_classes=10) for ipc in (1, 10) for seed in range(3)]
    assert plots.cost(rows, tmp_path, "cost") is not None
    for ax in kept[0].axes:
        low, high = ax.get_ylim()
        assert low == 0 and high > max(line.get_ydata().max() for line in ax.get_lines())
