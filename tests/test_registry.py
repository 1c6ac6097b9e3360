"""The registry: built-ins through the hooks, entry points, failures, duplicates, `list`."""

from __future__ import annotations

import pytest

from ddbench.errors import DDBenchError
from ddbench.registry import KINDS, load_registry

TOY = '''
from dataclasses import dataclass
import ddbench

class Toy(ddbench.Distiller):
    """A toy distiller from a third-party package."""
    name = "toy"

    @dataclass
    class Params:
        strength: float = 0.5

    def distill(self, ctx):
        from ddbench.builtins.distillers.random import sample_real
        return sample_real(ctx, ctx.generator())

@ddbench.hookimpl
def register_distillers(register):
    register(Toy)
'''


def test_builtins_register_through_the_hooks():
    reg = load_registry()
    assert {"random", "full", "dm", "dc", "dsa"} <= set(reg.names("distillers"))
    assert "convnet" in reg.names("models")
    assert {"digits", "mnist", "fashionmnist", "svhn", "cifar10", "cifar100", "imagefolder"} <= set(
        reg.names("datasets")
    )
    assert reg.names("executors") == ["local", "ray", "slurm"]
    dm = reg.get("distillers", "dm")
    assert dm.origin.module == "ddbench.builtins.distillers.dm" and dm.origin.package == "ddbench"
    # every built-in came through a hookimpl of a registered plugin module
    plugin_names = {name for name, _ in reg.pm.list_name_plugin()}
    assert "ddbench.builtins.distillers.dm" in plugin_names


def test_unknown_component_lists_valid_choices():
    reg = load_registry()
    with pytest.raises(DDBenchError, match=r"unknown distiller 'nope'; valid choices: dc, dm, dsa, file, full, mim, mtt, random"):
        reg.get("distillers", "nope")


def test_entry_point_plugin_has_its_package_as_origin(fake_plugin):
    fake_plugin("toy", TOY, version="2.5")
    reg = load_registry()
    toy = reg.get("distillers", "toy")
    assert str(toy.origin) == "fake_toy (fake-toy 2.5)"


def test_broken_plugin_is_reported_and_the_rest_work(fake_plugin, ddb):
    fake_plugin("broken", "raise RuntimeError('kaboom at import')\n")
    fake_plugin("toy", TOY)
    reg = load_registry()
    assert [f.name for f in reg.failures] == ["broken"]
    assert "kaboom at import" in reg.failures[0].error
    assert "toy" in reg.names("distillers")
    res = ddb("list", "distillers")
    assert res.code == 0
    assert "plugin 'broken' (fake-broken 1.0) failed to load: RuntimeError: kaboom at import" in res.err
    assert "plugins that failed to load" in res.out and "toy" in res.out


def test_duplicate_names_are_an_error_naming_both_origins(fake_plugin, ddb):
    fake_plugin("dup", TOY.replace('name = "toy"', 'name = "dm"'))
    with pytest.raises(DDBenchError) as err:
        load_registry()
    msg = str(err.value)
    assert "distiller 'dm' is registered twice" in msg
    assert "ddbench.builtins.distillers.dm (ddbench" in msg and "fake_dup (fake-dup 1.0)" in msg
    res = ddb("list")
    assert res.code == 2 and res.err.count("\n") == 1


def test_plugins_env_restricts_loading(fake_plugin, monkeypatch):
    fake_plugin("toy", TOY)
    monkeypatch.setenv("DDBENCH_PLUGINS", "")
    assert "toy" not in load_registry().names("distillers")


def test_list_shows_every_kind_origin_and_params(ddb):
    res = ddb("list")
    assert res.code == 0
    for kind in KINDS:
        assert f"\n{kind}\n" in "\n" + res.out
    assert "from ddbench.builtins.distillers.dm (ddbench " in res.out
    assert "iterations=20000 (small: 50)" in res.out
    assert "norm=instancenorm" in res.out and "{instancenorm|batchnorm|layernorm|groupnorm|none}" in res.out
    assert "uniform: ddbench-eval/v1" in res.out and "epochs=1000 (small: 100)" in res.out
    assert "objectives\n  mim " in res.out and "lambda=0.8 [>= 0], beta=2.0" in res.out
    assert "executors\n  local" in res.out


def test_list_one_kind(ddb):
    res = ddb("list", "models")
    assert res.code == 0 and "convnet" in res.out and "distillers" not in res.out
    bad = ddb("list", "widgets")
    assert bad.code == 2 and "widgets" in bad.err


def test_misspelled_hook_fails_loudly(fake_plugin):
    fake_plugin("typo", "import ddbench\n\n@ddbench.hookimpl\ndef register_distiller(register):\n    pass\n")
    with pytest.raises(DDBenchError, match="register_distiller"):
        load_registry()


def test_hook_tracing_for_plugin_authors(monkeypatch, capsys):
    monkeypatch.setenv("DDBENCH_TRACE_HOOKS", "1")
    load_registry()
    assert "register_distillers" in capsys.readouterr().err


def test_the_readme_notebook_snippet_builds_checked_components(tmp_path, monkeypatch):
    """``Registry.create`` as the README shows it: the snippet runs, and bad parameters are
    the one-line errors ``--set`` gives."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = next(block for block in readme.split("```python\n")[1:] if "reg.create(" in block).split("```")[0]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(snippet, scope)
    assert sum(p.numel() for p in scope["net"].parameters()) > 0
    reg = scope["reg"]
    with pytest.raises(DDBenchError, match="unknown parameter convnet.widht; valid parameters of convnet"):
        reg.create("models", "convnet", widht=3)
    with pytest.raises(DDBenchError, match="invalid value -3 for convnet.width: must be >= 1"):
        reg.create("models", "convnet", width=-3)
    with pytest.raises(DDBenchError, match="nosuch"):
        reg.create("trackers", "nosuch")
