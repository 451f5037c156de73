"""Interleaved timing: contenders run A B C A B C ..., ratios are medians of per-round ratios.

A machine's speed drifts (frequency scaling, other tenants), so numbers from separate runs are
never compared: every round times all contenders back to back and each reported ratio is the
median over rounds of ``t_a / t_b`` measured in the same round. The library itself times with
this (``prune.accelerate_nm`` picks a layer's path by measurement); ``sparseconv.bench`` builds
its reports on it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(
    contenders: dict[str, Callable[[], object]],
    rounds: int = 7,
    warmup: int = 1,
    device: str = "cpu",
    inner: int = 1,
) -> dict[str, list[float]]:
    """Seconds per call for each contender, one entry per round.

    ``inner`` calls run back to back inside each timed sample (between two device syncs): on a
    GPU a layer takes ~0.1 ms, so one call per sample would time the sync, not the kernels.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - t0) / inner)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of ``time(b) / time(a)``: > 1 means ``a`` is faster than ``b``."""
    return statistics.median(tb / ta for ta, tb in zip(times[a], times[b]))


class Threads:
    """Context manager running a block with a given number of torch CPU threads."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.saved)
