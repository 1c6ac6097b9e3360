"""``ddbench bench``: every setting runs in its own process and lands in the table and JSON."""

from __future__ import annotations

import json
import sys


def test_bench_measures_each_setting_in_a_fresh_process(ddb, tmp_path):
    out = tmp_path / "b.json"
    res = ddb("bench", "--settings", "dm,mtt-ss10-full,experts", "--data", "digits",
              "--data-root", str(tmp_path / "d"), "--iterations", "2", "--json", str(out))
    assert res.code == 0, res.err
    doc = json.loads(out.read_text())
    recs = {r["setting"]: r for r in doc["records"]}
    assert set(recs) == {"dm", "mtt-ss10-full", "experts"}
    for r in recs.values():
        assert r["iterations"] == 2 and r["seconds"] > 0 and r["peak_mb"] > 50
        assert r["flops"] > 1e6 and r["gflops_per_s"] == r["flops"] / r["seconds"] / 1e9
    assert doc["environment"]["gemm_gflops"] > 0.1 and "of GEMM" in res.out
    assert recs["experts"]["unit"] == "epoch"
    # each worker runs with the malloc tuning of `ddbench run` (glibc only), so its numbers are a run's
    assert all(r["malloc_tuned"] is sys.platform.startswith("linux") for r in recs.values())
    assert recs["mtt-ss10-full"]["params"]["backprop"] == "full"
    assert doc["environment"]["torch"] and doc["data"] == "digits"
    # the printed table carries the reference figures beside ours
    assert "reference s" in res.out and "142-144" not in res.out and "1.8" in res.out


def test_bench_rejects_unknown_settings(ddb, tmp_path):
    res = ddb("bench", "--settings", "dm,nope", "--json", str(tmp_path / "b.json"))
    assert res.code == 2 and "unknown bench setting 'nope'" in res.err and "dc-ipc10" in res.err
    assert not (tmp_path / "b.json").exists()


def test_flops_are_counted_on_one_extra_untimed_iteration():
    import torch

    from ddbench.bench import _CountLast

    clock = _CountLast(2)
    a, b = torch.ones(8, 16), torch.ones(16, 4)
    for step in (1, 2, 3):
        torch.mm(a, b)
        if step == 3:
            torch.mm(a, b)  # only the third step's two products are counted
        clock(step)
    times, flops = clock.done()
    assert len(times) == 2 and all(t >= 0 for t in times)
    assert flops == 2 * (2 * 8 * 16 * 4)


def test_no_flops_skips_the_counting_iteration(ddb, tmp_path):
    from ddbench.bench import _CountLast

    clock = _CountLast(2, count=False)
    for step in (1, 2):
        clock(step)
    assert clock.done()[1] is None and not clock.counting

    out = tmp_path / "b.json"
    res = ddb("bench", "--settings", "dm", "--data", "digits", "--data-root", str(tmp_path / "d"),
              "--iterations", "2", "--no-flops", "--json", str(out))
    assert res.code == 0, res.err
    doc = json.loads(out.read_text())
    (rec,) = doc["records"]
    assert rec["iterations"] == 2 and rec["seconds"] > 0
    assert rec["flops"] is None and rec["gflops_per_s"] is None
    assert doc["environment"]["gemm_gflops"] is None and "of GEMM:" not in res.out
