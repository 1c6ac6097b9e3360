"""Host memory behaviour that decides CPU speed: glibc malloc tuning and chunk sizes.

glibc serves every allocation above its mmap threshold (at most 32 MB) with fresh pages
and returns them on free; touching fresh pages is slow on virtual machines, and a single
ConvNet activation of 256 CIFAR images is 128 MB. So every forward pass page-faults its
activations in again. ``tune_allocator`` keeps freed memory in the heap for reuse
(``M_MMAP_MAX=0``, ``M_TRIM_THRESHOLD=1 GiB``). Measured on a 2-core VM: a DM iteration on
CIFAR-10 (2,560 real images) 6.4 s -> 2.4 s, system time per evaluation 12.6 s -> 0.3 s.
The cost: up to 1 GiB of freed memory stays with the process. ``DDBENCH_MALLOC_TUNING=0``
turns it off. CUDA's caching allocator has no such cost.
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done = False

CPU_CHUNK = 256
CUDA_CHUNK = 4096


def tune_allocator() -> bool:
    """Apply the malloc settings once per process (glibc on Linux only); True if applied."""
    global _done
    if _done or not sys.platform.startswith("linux") or os.environ.get("DDBENCH_MALLOC_TUNING") == "0":
        return _done
    try:
        libc = ctypes.CDLL("libc.so.6")
        _done = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        _done = False
    return _done


def inference_chunk(device: torch.device) -> int:
    """Images per forward pass without a graph (real-data embeddings, test accuracy)."""
    return CUDA_CHUNK if torch.device(device).type == "cuda" else CPU_CHUNK
