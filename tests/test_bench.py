"""``ddbench bench``: every setting runs in its own process and lands in the table and JSON."""

from __future__ import annotations

import json


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
    assert recs["experts"]["unit"] == "epoch"
    assert recs["mtt-ss10-full"]["params"]["backprop"] == "full"
    assert doc["environment"]["torch"] and doc["data"] == "digits"
    # the printed table carries the reference figures beside ours
    assert "reference s" in res.out and "142-144" not in res.out and "1.8" in res.out


def test_bench_rejects_unknown_settings(ddb, tmp_path):
    res = ddb("bench", "--settings", "dm,nope", "--json", str(tmp_path / "b.json"))
    assert res.code == 2 and "unknown bench setting 'nope'" in res.err and "dc-ipc10" in res.err
    assert not (tmp_path / "b.json").exists()
