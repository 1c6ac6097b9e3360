"""Property-based fuzzing of the readers of untrusted input: sweep files, released sets
(``file:``), checkpoints and export folders (``ddbench import``). The property is the
project's rule for bad input: a one-line ``DDBenchError`` or success, never another
exception, and nothing written on refusal.

The suite runs a few examples per reader (``DDBENCH_FUZZ_EXAMPLES``, default 20); CI runs
the same tests again with 400 each (``.ci/run``), about a minute. Examples are derived from
the test's name, so CI is repeatable; ``DDBENCH_FUZZ_RANDOM=1`` explores new ones.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import click
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddbench.errors import DDBenchError

EXAMPLES = int(os.environ.get("DDBENCH_FUZZ_EXAMPLES", "20"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not os.environ.get("DDBENCH_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def one_line(exc: DDBenchError) -> None:
    text = str(exc)
    assert text and "\n" not in text.strip(), text


# --------------------------------------------------------------------------- sweep files

OPTION_KEYS = ["methods", "datasets", "ipc", "seeds", "models", "conditions", "store", "preset", "set",
               "params", "sweeps", "track", "track-uri", "device", "jobs", "executor", "data-root", "quiet"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["random", "dm", "digits", "1", "0,1", "dm.iterations", "eval.epochs", "small"]))
KEYS = st.one_of(st.sampled_from(OPTION_KEYS), st.text(max_size=8), st.integers(-3, 3),
                 st.sampled_from(["dm.iterations", "eval.epochs", "mim.lambda", "dm", "eval"]))
TREES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(KEYS, inner, max_size=5)),
                     max_leaves=20)


@pytest.fixture(scope="module")
def run_options():
    from ddbench.cli.run import option_specs, run_cmd
    from ddbench.registry import load_registry

    return option_specs(click.Context(run_cmd)), load_registry()


def _read_sweep(path: Path, run_options) -> None:
    from ddbench.cli.run import LISTS
    from ddbench.plan import config

    specs, registry = run_options
    cfg = config.select(config.read(path), path, None)
    defaults, _ = config.to_defaults(cfg, path, specs, registry)
    for name, value in defaults.items():
        if name in LISTS and value is not None:
            LISTS[name](value)


@FUZZ
@given(tree=st.dictionaries(KEYS, TREES, max_size=6), fmt=st.sampled_from(["yaml", "json-as-yaml"]))
def test_sweep_file_reader_refuses_in_one_line_or_reads(run_options, tree, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        text = yaml.safe_dump(tree) if fmt == "yaml" else json.dumps(tree, default=str)
        path.write_text(text)
        try:
            _read_sweep(path, run_options)
        except DDBenchError as exc:
            one_line(exc)
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["sweep.yaml"]


@FUZZ
@given(raw=st.binary(max_size=400), suffix=st.sampled_from([".yaml", ".toml"]))
def test_sweep_file_reader_takes_any_bytes(run_options, raw, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"sweep{suffix}"
        path.write_bytes(raw)
        try:
            _read_sweep(path, run_options)
        except DDBenchError as exc:
            one_line(exc)


# --------------------------------------------------------------------------- released sets

@pytest.fixture(scope="module")
def digits():
    from ddbench.builtins.datasets.digits import Digits

    return Digits().load(None, Path(tempfile.mkdtemp()), False)


DTYPES = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.uint8, torch.int64, torch.int32,
                          torch.bool, torch.complex64])


@st.composite
def tensors(draw, max_dims=4):
    """A tensor of any small shape and dtype, values from a drawn seed and scale, some NaN or
    infinite, sometimes sparse."""
    shape = draw(st.lists(st.integers(0, 12), min_size=0, max_size=max_dims))
    dtype = draw(DTYPES)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    t = torch.randn(shape, generator=gen) * draw(st.sampled_from([0.01, 1.0, 100.0])) + draw(st.sampled_from([0.0, 0.5, 3.0]))
    if t.numel() and draw(st.booleans()):
        t.view(-1)[0] = draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e30]))
    if dtype.is_floating_point or dtype.is_complex:
        t = t.to(dtype)
    elif dtype is torch.bool:
        t = t.nan_to_num(0.0, 0.0, 0.0) > 0
    else:
        t = t.nan_to_num(0.0, 300.0, -3.0).round().clamp(-3, 300)
        t = t.clamp(0, 255).to(dtype) if dtype is torch.uint8 else t.to(dtype)
    if draw(st.booleans()) and t.dim() >= 1 and dtype in (torch.float32, torch.float64):
        t = t.to_sparse()
    return t


@st.composite
def released(draw):
    """A dict as a released ``.pt`` may hold it: images and labels of any shape and dtype
    (often digits-shaped), an lr, soft labels, or the reference code's res layout."""
    n = draw(st.integers(0, 12))
    good_images = torch.rand(n, 1, 8, 8) * draw(st.sampled_from([1.0, 1.01, 3.0, -2.0]))
    images = draw(st.one_of(st.just(good_images), tensors()))
    labels = draw(st.one_of(st.just(torch.arange(n) % 10), tensors(max_dims=2),
                            st.just(torch.arange(n) - 1), st.just(torch.full((n,), 10))))
    entries = {"images": images, "labels": labels}
    if draw(st.booleans()):
        entries["lr"] = draw(st.one_of(tensors(max_dims=1), st.just(torch.tensor(0.01))))
    if draw(st.booleans()):
        entries = {"data": [[images, labels]], "accs_all_exps": {"DM": [0.5]}}
    return entries


@FUZZ
@given(entries=released(), space=st.sampled_from(["auto", "pixel", "normalized"]))
def test_released_set_reader_refuses_in_one_line_or_fits(digits, entries, space):
    from ddbench.data.released import fit_to_dataset, read_external

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "set.pt"
        torch.save(entries, path)
        try:
            ext = read_external(path)
            synset, _ = fit_to_dataset(ext, digits, space, "file:set.pt")
        except DDBenchError as exc:
            one_line(exc)
            return
        assert synset.images.shape[1:] == (1, 8, 8) and bool(torch.isfinite(synset.images).all())
        labels = synset.labels
        assert labels.dtype == torch.int64 and len(labels) == len(synset.images)
        assert labels.numel() == 0 or (int(labels.min()) >= 0 and int(labels.max()) < 10)


# --------------------------------------------------------------------------- checkpoints

def _live_state():
    gen = torch.Generator().manual_seed(0)
    images = torch.zeros(10, 1, 8, 8, requires_grad=True)
    opt = torch.optim.SGD([images], lr=0.1, momentum=0.5)
    images.grad = torch.ones_like(images)
    opt.step()
    return {"images": images, "opt": opt, "gen": gen, "lr": 0.01, "order": [1, 2]}


@FUZZ
@given(step=st.one_of(st.integers(-5, 12), st.text(max_size=4)), edit=st.sampled_from(
    ["none", "shape", "dtype", "drop", "extra", "json", "seconds", "key", "state-text"]),
    text=st.text(max_size=20))
def test_checkpoint_reader_refuses_in_one_line_or_fits(step, edit, text):
    from ddbench.storage import checkpoint as ck

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.safetensors"
        saver = ck.Checkpointer(path, "k" * 20, iterations=10)
        saver.save(3, {"distiller": _live_state(), "context": {}})
        tensors, meta = ck.read(path)
        meta["step"] = str(step)
        if edit == "shape":
            name = sorted(tensors)[0]
            tensors[name] = torch.zeros(1)
        elif edit == "dtype":
            name = sorted(tensors)[0]
            tensors[name] = tensors[name].to(torch.float64)
        elif edit == "drop":
            tensors.pop(sorted(tensors)[0])
        elif edit == "extra":
            tensors["zz"] = torch.zeros(2)
        elif edit == "json":
            meta["state"] = meta["state"][: len(meta["state"]) // 2] + text
        elif edit == "seconds":
            meta["seconds"] = text
        elif edit == "key":
            meta["key"] = text
        elif edit == "state-text":
            meta["state"] = json.dumps({"distiller": {"images": text}, "context": {}})
        ck.write(path, tensors, meta)
        loader = ck.Checkpointer(path, "k" * 20, iterations=10)
        live = _live_state()
        try:
            saved = loader.load()
            assert saved is not None
            ck.check_fits(live, saved.state["distiller"], "the distiller's state")
        except DDBenchError as exc:
            one_line(exc)
            return
        ck.restore(live, saved.state["distiller"], "the distiller")
        assert live["images"].shape == (10, 1, 8, 8) and 0 <= saved.step <= 10


def test_fuzzers_can_fail():
    """The property is not vacuous: an error of two lines fails it (and any exception but
    ``DDBenchError`` escapes the ``except`` of every fuzzer above, failing it)."""
    with pytest.raises(AssertionError):
        one_line(DDBenchError("two\nlines"))


# --------------------------------------------------------------------------- export folders

LEAVES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
                   st.just("0" * 20), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _paths(node, prefix=()):
    """Every (path, leaf) of a JSON document, containers included."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(doc, path, value):
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


@pytest.fixture(scope="module")
def export_made(tmp_path_factory):
    from test_import_safety import made

    return made.__wrapped__(tmp_path_factory)


@FUZZ
@given(data=st.data())
def test_import_refuses_in_one_line_or_merges_and_a_refusal_changes_nothing(export_made, data):
    from test_share import db_digest, files_digest

    from ddbench.storage.share import import_folder

    with tempfile.TemporaryDirectory() as tmp:
        store, folder = Path(tmp) / "A" / "db.sqlite", Path(tmp) / "share"
        shutil.copytree(export_made / "A", store.parent)
        shutil.copytree(export_made / "share", folder)
        doc = json.loads((folder / "results.json").read_text())
        for _ in range(data.draw(st.integers(1, 3))):  # paths anew: an edit may replace a container
            paths = [p for p in _paths(doc) if p and p[0] != "statistics"]
            _set(doc, data.draw(st.sampled_from(paths)), data.draw(LEAVES))
        (folder / "results.json").write_text(json.dumps(doc))
        before = (db_digest(store), files_digest(store.parent))
        try:
            import_folder(folder, store)
        except DDBenchError as exc:
            one_line(exc)
            assert (db_digest(store), files_digest(store.parent)) == before
