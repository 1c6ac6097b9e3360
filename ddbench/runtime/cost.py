"""Wall time, CPU time and peak memory of one piece of work (a distillation, an evaluation).

CPU seconds are the process's user + system time over the work, all its threads together
(``time.process_time``): wall seconds times the cores kept busy.

On CUDA the peak is ``torch.cuda.max_memory_allocated``; on CPU the peak resident set
size of the process while the work ran, sampled from /proc every 20 ms (getrusage's
maxrss would only give the whole process's lifetime peak).
"""

from __future__ import annotations

import os
import resource
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the lifetime peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Cost:
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_mem_mb: float = 0.0


@contextmanager
def measure(device: torch.device):
    cost = Cost()
    start, cpu_start = time.perf_counter(), time.process_time()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield cost
        finally:
            torch.cuda.synchronize(device)
            cost.seconds = time.perf_counter() - start
            cost.cpu_seconds = time.process_time() - cpu_start
            cost.peak_mem_mb = torch.cuda.max_memory_allocated(device) / 2**20
        return
    peak = [_rss_bytes()]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.02):
            peak[0] = max(peak[0], _rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield cost
    finally:
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], _rss_bytes())
        cost.seconds = time.perf_counter() - start
        cost.cpu_seconds = time.process_time() - cpu_start
        cost.peak_mem_mb = peak[0] / 2**20


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"
