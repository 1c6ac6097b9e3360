"""Host memory behaviour that decides CPU speed: glibc malloc tuning and chunk sizes.

glibc serves every allocation above its mmap threshold (at most 32 MB) with fresh pages
and returns them on free; touching fresh pages is slow on virtual machines, and a single
ConvNet activation of 256 CIFAR images is 128 MB. So every forward pass page-faults its
activations in again. ``tune_allocator`` keeps freed memory in the heap for reuse
(``M_MMAP_MAX=0``, ``M_TRIM_THRESHOLD=1 GiB``). Measured on a 2-core VM: a DM iteration on
CIFAR-10 (2,560 real images) 6.4 s -> 2.4 s, system time per evaluation 12.6 s -> 0.3 s.
The cost: up to 1 GiB of freed memory stays with the process, and a workload that keeps
many large blocks alive between temporaries (MTT's unrolled graph) fragments the heap:
``glibc_defaults`` gives such code glibc's own behaviour back. ``DDBENCH_MALLOC_TUNING=0``
turns the tuning off everywhere. CUDA's caching allocator has no such cost.
"""

from __future__ import annotations

import ctypes
import os
import sys
from contextlib import contextmanager

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_MMAP_THRESHOLD = -3
_GLIBC_MMAP_MAX = 65536  # glibc's default
_GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20  # the dynamic threshold's ceiling on 64-bit glibc
_TUNED_TRIM_THRESHOLD = 2**30
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
        _done = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TUNED_TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        _done = False
    return _done


@contextmanager
def glibc_defaults():
    """Large blocks from mmap again (glibc's default) while the block runs, when tuned.

    Measured with MTT on CIFAR-10 IPC 10 (syn_steps 10, 2-core VM): peak RSS 6.9 GB with the
    tuning, 5.3 GB without, for the same seconds per iteration within noise. With the dynamic
    threshold's settled values (below): mtt-ss10 19.6 s per iteration against 24.0-26.6 s with
    the fixed 128 KiB threshold and 21.2 s untuned (`ddbench bench --iterations 5`, one session).
    """
    if not _done:
        yield
        return
    libc = ctypes.CDLL("libc.so.6")
    # any mallopt turns glibc's dynamic mmap threshold off for good, leaving it at 128 KiB: every
    # mid-size block would then be mmapped and page-faulted in afresh. Use the values the dynamic
    # threshold settles at after large frees: mmap above 32 MiB, trim above 64 MiB.
    libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, 2 * _GLIBC_MMAP_THRESHOLD_MAX)
    libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, _TUNED_TRIM_THRESHOLD)


def inference_chunk(device: torch.device) -> int:
    """Images per forward pass without a graph (real-data embeddings, test accuracy)."""
    return CUDA_CHUNK if torch.device(device).type == "cuda" else CPU_CHUNK
