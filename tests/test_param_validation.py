"""Parameter constraints: ``Annotated`` metadata on ``Params`` fields, checked at planning for
``--set`` values, presets and defaults (built-ins and plugins alike)."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Annotated, Literal

import pytest
from annotated_types import Ge, Gt, Interval, Len, MultipleOf, Predicate, Timezone

from ddbench import params as P
from ddbench.errors import DDBenchError
from ddbench.evaluation import protocol as proto
from ddbench.evaluation.augment import Strategy
from ddbench.params import AllowNonFinite, Check
from ddbench.registry import KINDS, load_registry

STRATEGY_RULE = "expected auto, none or ops joined by '_' from color, crop, cutout, flip, scale, rotate"


@dataclass
class Toy:
    steps: Annotated[int, Ge(1)] = 10
    lr: Annotated[float, Gt(0)] = 0.1
    momentum: Annotated[float, Interval(ge=0, le=1)] = 0.5
    scale: float = 1.0
    shift: Annotated[float, AllowNonFinite()] = 0.0
    even: Annotated[int, MultipleOf(2)] = 2
    tag: Annotated[str, Len(1, 4)] = "a"
    word: Annotated[str, Check(str.isidentifier, "an identifier")] = "x"
    digits: Annotated[str, Predicate(str.isdigit)] = "1"
    strategy: Strategy = "auto"
    gpus: Annotated[float | None, Ge(0)] = None
    cap: Annotated[int, Ge(0)] | None = None
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    lambda_: Annotated[float, Ge(0)] = field(default=0.8, metadata={"help": "weight"})


def parse(key: str, text: str):
    return P.parse_overrides(Toy, {key: text}, "toy")[key]


def error(key: str, text: str) -> str:
    with pytest.raises(DDBenchError) as exc:
        parse(key, text)
    return str(exc.value)


# ------------------------------------------------------------------------ the mechanism


def test_ranges_name_the_parameter_the_value_and_what_is_allowed():
    assert error("steps", "-5") == "invalid value -5 for toy.steps: must be >= 1"
    assert error("steps", "0") == "invalid value 0 for toy.steps: must be >= 1"
    assert error("lr", "0") == "invalid value 0.0 for toy.lr: must be > 0"
    assert error("momentum", "1.5") == "invalid value 1.5 for toy.momentum: must be >= 0 and <= 1"
    assert error("momentum", "-0.1") == "invalid value -0.1 for toy.momentum: must be >= 0 and <= 1"
    assert error("even", "3") == "invalid value 3 for toy.even: must be a multiple of 2"
    assert error("tag", "") == "invalid value '' for toy.tag: must be of length >= 1 and of length <= 4"
    assert error("digits", "x1") == "invalid value 'x1' for toy.digits: must be accepted by str.isdigit"
    assert error("lambda", "-1") == "invalid value -1.0 for toy.lambda: must be >= 0"
    assert (parse("steps", "1"), parse("lr", "1e-9"), parse("momentum", "1")) == (1, 1e-9, 1.0)
    assert (parse("even", "4"), parse("tag", "abcd"), parse("digits", "42")) == (4, "abcd", "42")


def test_floats_must_be_finite_unless_declared_otherwise():
    assert error("lr", "nan") == "invalid value nan for toy.lr: must be finite and > 0"
    assert error("lr", "inf") == "invalid value inf for toy.lr: must be finite and > 0"
    assert error("scale", "-inf") == "invalid value -inf for toy.scale: must be finite"
    assert error("scale", "NaN") == "invalid value nan for toy.scale: must be finite"
    assert parse("scale", "-3.5") == -3.5
    assert math.isnan(parse("shift", "nan")) and parse("shift", "inf") == math.inf
    # an int parameter never parses a non-finite value: it is a type error
    assert error("steps", "inf") == "invalid value 'inf' for toy.steps: expected int"


def test_check_describes_what_is_allowed():
    assert error("word", "1x") == "invalid value '1x' for toy.word: expected an identifier"
    assert parse("word", "ok_2") == "ok_2"
    for bad in ("nosuch", "color__crop", "Color", "auto_flip"):
        assert error("strategy", bad) == f"invalid value {bad!r} for toy.strategy: {STRATEGY_RULE}"
    for good in ("auto", "none", "None", "", "color_crop", "flip", "color_crop_cutout_flip_scale_rotate"):
        assert parse("strategy", good) == good


def test_a_failing_predicate_counts_as_false():
    @dataclass
    class Odd:
        x: Annotated[str, Check(lambda s: 1 / 0, "anything")] = "a"

    with pytest.raises(DDBenchError, match=r"^invalid value 'b' for odd.x: expected anything$"):
        P.parse_overrides(Odd, {"x": "b"}, "odd")


def test_optional_fields_take_none_and_check_the_rest():
    assert parse("gpus", "none") is None and parse("gpus", "null") is None
    assert parse("gpus", "0.5") == 0.5
    assert error("gpus", "-1") == "invalid value -1.0 for toy.gpus: must be >= 0"
    assert error("gpus", "nan") == "invalid value nan for toy.gpus: must be finite and >= 0"
    assert parse("cap", "None") is None and parse("cap", "3") == 3
    assert error("cap", "-2") == "invalid value -2 for toy.cap: must be >= 0"
    assert error("steps", "none") == "invalid value 'none' for toy.steps: expected int"
    assert P.build(Toy, {"gpus": None, "cap": None}, "toy").gpus is None


def test_literal_choices_and_plain_types_are_unaffected():
    assert parse("mode", "b") == "b"
    assert error("mode", "c") == "invalid value 'c' for toy.mode; valid choices: a, b"
    assert parse("flag", "yes") is True
    assert error("flag", "maybe") == "invalid value 'maybe' for toy.flag: expected bool"
    assert error("steps", "2.5") == "invalid value '2.5' for toy.steps: expected int"


def test_annotated_changes_nothing_else():
    toy = P.build(Toy, {}, "toy")
    assert toy == Toy()
    assert dataclasses.asdict(toy)["steps"] == 10 and P.as_dict(toy)["lambda"] == 0.8
    hints = typing.get_type_hints(Toy)  # Annotated stripped, as before
    assert hints["steps"] is int and hints["strategy"] is str and hints["gpus"] == float | None
    info = {i.name: i for i in P.fields(Toy)}
    assert [i.name for i in P.fields(Toy)][-1] == "lambda"
    assert (info["steps"].type_name, info["steps"].default, info["steps"].constraint) == ("int", 10, ">= 1")
    assert info["momentum"].constraint == ">= 0 and <= 1"
    assert info["gpus"].type_name == "float | None" and info["gpus"].constraint == ">= 0"
    assert info["mode"].choices == ("a", "b") and info["mode"].type_name == "choice"
    assert info["mode"].constraint == "" and info["scale"].constraint == ""
    assert info["word"].constraint == "an identifier"
    assert info["strategy"].constraint == STRATEGY_RULE.removeprefix("expected ")
    assert info["lambda"].help == "weight"


def test_build_checks_defaults_and_presets_against_the_declaration():
    @dataclass
    class BadDefault:
        steps: Annotated[int, Ge(1)] = 0

    with pytest.raises(DDBenchError, match=r"^invalid value 0 for plug.steps: must be >= 1$"):
        P.build(BadDefault, {}, "plug")
    with pytest.raises(DDBenchError, match=r"^invalid value -1 for toy.steps: must be >= 1$"):
        P.build(Toy, {"steps": -1}, "toy")  # a preset value
    with pytest.raises(DDBenchError, match=r"^invalid value nan for toy.scale: must be finite$"):
        P.build(Toy, {"scale": math.nan}, "toy")
    with pytest.raises(DDBenchError, match=r"^invalid value '50' for toy.steps: expected int$"):
        P.build(Toy, {"steps": "50"}, "toy")
    with pytest.raises(DDBenchError, match=r"^invalid value 'c' for toy.mode; valid choices: a, b$"):
        P.build(Toy, {"mode": "c"}, "toy")
    assert P.build(Toy, {"lr": 2, "steps": 3}, "toy").lr == 2  # an int for a float is fine
    # and an instance changed afterwards can be checked again
    with pytest.raises(DDBenchError, match=r"toy.steps: must be >= 1"):
        P.validate(dataclasses.replace(Toy(), steps=0), "toy")


def test_metadata_ddbench_cannot_check_is_an_error_and_foreign_metadata_ignored():
    @dataclass
    class Odd:
        when: Annotated[str, Timezone(None)] = "x"
        note: Annotated[int, "just a note"] = 1

    with pytest.raises(DDBenchError, match=r"odd.when declares a constraint ddbench cannot check"):
        P.build(Odd, {}, "odd")
    assert P.parse_overrides(Odd, {"note": "-7"}, "odd") == {"note": -7}


def test_every_builtin_default_and_preset_satisfies_its_declaration():
    reg = load_registry()
    for kind in KINDS:
        for entry in reg.entries(kind):
            for preset in ("small", "paper"):
                for dataset, ipc in [(None, None), ("cifar10", 1), ("cifar100", 50)]:
                    values = entry.cls.preset_values(preset, dataset, ipc)
                    P.build(entry.cls.Params, dict(values), entry.name)
    for values in proto.PRESETS.values():
        P.build(proto.ProtocolParams, values, proto.NAMESPACE)


def test_builtin_declarations():
    reg = load_registry()
    dm = {i.name: i.constraint for i in P.fields(reg.get("distillers", "dm").cls.Params)}
    assert dm["iterations"] == ">= 1" and dm["lr_img"] == "> 0" and dm["momentum"] == ">= 0 and <= 1"
    mtt = {i.name: i.constraint for i in P.fields(reg.get("distillers", "mtt").cls.Params)}
    assert mtt["syn_steps"] == mtt["expert_epochs"] == ">= 1" and mtt["batch_syn"] == ">= 0"
    ev = {i.name: i.constraint for i in P.fields(proto.ProtocolParams)}
    assert ev["epochs"] == ">= 0" and ev["num_eval"] == ">= 1" and ev["lr"] == "> 0"
    mim = {i.name: i.constraint for i in P.fields(reg.get("objectives", "mim").cls.Params)}
    assert mim["lambda"] == ">= 0" and mim["tau"] == "> 0"
    ray = {i.name: i.constraint for i in P.fields(reg.get("executors", "ray").cls.Params)}
    assert ray["num_gpus"] == ">= 0" and ray["num_cpus"] == "> 0"


# ------------------------------------------------------------------ through the command line

RUN = ["run", "--datasets", "digits", "--ipc", "1", "--seeds", "0"]


@pytest.mark.parametrize(
    ("method", "setting", "message"),
    [
        ("dm", "dm.iterations=-5", "invalid value -5 for dm.iterations: must be >= 1"),
        ("mtt", "mtt.syn_steps=0", "invalid value 0 for mtt.syn_steps: must be >= 1"),
        ("dm", "dm.lr_img=nan", "invalid value nan for dm.lr_img: must be finite and > 0"),
        ("dm", "dm.dsa_strategy=nosuch", f"invalid value 'nosuch' for dm.dsa_strategy: {STRATEGY_RULE}"),
        ("dm", "eval.num_eval=0", "invalid value 0 for eval.num_eval: must be >= 1"),
        ("dm", "eval.momentum=2", "invalid value 2.0 for eval.momentum: must be >= 0 and <= 1"),
        ("dm", "local.jobs=0", "invalid value 0 for local.jobs: must be >= 1"),
    ],
)
def test_run_rejects_a_bad_value_in_one_line(ddb, tmp_path, method, setting, message):
    store = tmp_path / "r.sqlite"
    res = ddb(*RUN, "--methods", method, "--set", setting, "--store", str(store))
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(message), res.err
    assert not store.exists()


def test_run_accepts_a_valid_strategy(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    res = ddb(*RUN, "--methods", "dm", "--set", "dm.dsa_strategy=color_crop", "--set", "dm.lr_img=0.5",
              "--store", str(store), "--dry-run")
    assert res.code == 0, res.err


PLUGIN = '''
from dataclasses import dataclass
from typing import Annotated
from annotated_types import Ge
import ddbench
from ddbench.params import Check

class Toy(ddbench.Distiller):
    """A toy distiller whose small preset breaks its own declaration."""
    name = "toy"
    presets = {"small": {"rounds": 0}}

    @dataclass
    class Params:
        rounds: Annotated[int, Ge(1)] = 3
        kind: Annotated[str, Check(lambda s: s in ("a", "b"), "a or b")] = "a"

    def distill(self, ctx):
        from ddbench.builtins.distillers.random import sample_real
        return sample_real(ctx, ctx.generator())

@ddbench.hookimpl
def register_distillers(register):
    register(Toy)
'''


def test_plugins_are_checked_the_same_way(ddb, fake_plugin, tmp_path):
    fake_plugin("toy", PLUGIN)
    store = tmp_path / "r.sqlite"
    base = [*RUN, "--methods", "toy", "--store", str(store), "--dry-run"]
    res = ddb(*base)
    assert res.code == 2 and res.err.strip().endswith("invalid value 0 for toy.rounds: must be >= 1")
    res = ddb(*base, "--set", "toy.rounds=2", "--set", "toy.kind=c")
    assert res.code == 2 and res.err.strip().endswith("invalid value 'c' for toy.kind: expected a or b")
    assert ddb(*base, "--set", "toy.rounds=2", "--set", "toy.kind=b").code == 0
    assert not store.exists()
