"""``torch.compile`` for a network's first-order passes: an execution setting, like threads.

Why: on a CPU about 40% of a ConvNet-3 forward and backward at CIFAR-10 shape is instance
norm, ReLU and average pooling, memory-bound passes that inductor fuses into a few loops
(profiled: 0.83 -> 0.54 s for the 256-image forward and backward of DC's real side). The
arithmetic is the same; results differ from eager only in float rounding (summation order),
as they do between thread counts, so the setting is recorded with a result's cost but is not
part of its key.

What is compiled: passes with at most one backward (DC/DSA's real-batch gradients and inner
training, DM's embeddings, MTT's forward unroll under ``backprop=recompute``/``tesla``, the
evaluation and expert training). Passes differentiated twice (DC/DSA's synthetic gradients,
MTT's replayed steps and its ``full`` unroll) stay eager: compiled graphs do not support double
backward.

Modes (``ddbench run --compile``, ``$DDBENCH_COMPILE``): ``on``, ``off``, or ``auto`` = on for
CPU devices and images of at least ``AUTO_MIN_PIXELS`` pixels (the one-off compilation, ~10-30 s
per graph shape in a fresh cache, a few seconds from the on-disk cache, is then small against the
work), and when a C++ compiler is on the PATH. CUDA stays eager under ``auto`` (not measured
here). A compilation that fails falls back to eager with one warning.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import nn

from ddbench.errors import DDBenchError, choices_error

Mode = Literal["auto", "on", "off"]
MODES = get_args(Mode)
ENV = "DDBENCH_COMPILE"
#: ``auto`` compiles for images of at least this many pixels (MNIST's 28x28 and up)
AUTO_MIN_PIXELS = 28 * 28


def mode() -> str:
    """The process's mode: ``$DDBENCH_COMPILE``, default ``auto``."""
    value = os.environ.get(ENV, "auto") or "auto"
    if value not in MODES:
        raise DDBenchError(f"{ENV}={value!r} is not a compile mode; valid choices: {', '.join(MODES)}")
    return value


def set_mode(value: str) -> None:
    """Set the mode for this process and the workers it starts (they inherit the environment)."""
    if value not in MODES:
        raise choices_error("compile mode", value, MODES)
    os.environ[ENV] = value


def enabled(device: torch.device, image_size: tuple[int, int]) -> bool:
    """Whether networks for ``image_size`` inputs on ``device`` are compiled in this process."""
    m = mode()
    if m != "auto":
        return m == "on"
    big = image_size[0] * image_size[1] >= AUTO_MIN_PIXELS
    return device.type == "cpu" and big and _have_cxx()


@functools.cache
def _have_cxx() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


@functools.cache
def _quiet_cpp_extension() -> None:
    """Inductor imports ``torch.utils.cpp_extension``, which logs a warning about CUDA_HOME on
    machines without CUDA; it concerns CUDA extensions, not the CPU code compiled here."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def first_order(net: nn.Module | Callable, device: torch.device, image_size: tuple[int, int]):
    """``net`` compiled (a module's ``forward``, ``embed`` and ``features``; another callable
    as it is) when ``enabled``, else ``net`` itself.

    The result shares ``net``'s parameters, buffers and train/eval flags; never
    differentiate through its gradients (``create_graph``).
    """
    return FirstOrder(net) if enabled(device, image_size) else net


class FirstOrder:
    """``net`` with its passes compiled; eager for good once a compilation fails (with one
    warning), so a machine without a working compiler still runs.

    A fresh network of the same architecture reuses the compiled code: dynamo caches it by the
    method's code, with the parameters as graph inputs."""

    _broken = False

    def __init__(self, net: nn.Module | Callable):
        self.net = net
        self._compiled: dict[str, Callable] = {}  # method -> its torch.compile wrapper

    def __call__(self, *args, **kwargs):
        # a module's forward (its hooks-free body, as torch.compile(module) traces it); any
        # other callable (MTT's functional student) as it is
        return self._run("forward" if isinstance(self.net, nn.Module) else "__call__", *args, **kwargs)

    def embed(self, *args, **kwargs):
        return self._run("embed", *args, **kwargs)

    def features(self, *args, **kwargs):
        return self._run("features", *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.net, name)

    def _run(self, method: str, *args, **kwargs):
        eager = getattr(self.net, method)
        if FirstOrder._broken:
            return eager(*args, **kwargs)
        try:
            if method not in self._compiled:
                _quiet_cpp_extension()
                self._compiled[method] = torch.compile(eager)
            return self._compiled[method](*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: run eager instead
            FirstOrder._broken = True
            first_line = (str(exc).splitlines() or [""])[0][:200]
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {first_line}); "
                          f"running eager (set {ENV}=off to skip the attempt)", RuntimeWarning, stacklevel=3)
            return eager(*args, **kwargs)
