"""Where a network's time goes: map building, convolution kernels, everything else.

:func:`measure` runs a callable with timers wrapped around the library's map building
(``build_kernel_map``'s search, the lazily derived CSR lists, transposed tables and dataflow
layouts) and around the convolution op's forward and backward; every timer is exclusive (a
layout built inside a convolution counts as map building, not twice). On CUDA each timer
synchronises the device, so a breakdown run is slower than a timed one; it is a separate pass,
never one of the interleaved rounds.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager

import torch

from sparseconv.functional import conv as conv_op
from sparseconv.maps import build
from sparseconv.maps.kernel_map import KernelMap


class _Timers:
    def __init__(self, sync: bool) -> None:
        self.sync = sync
        self.totals = {"maps": 0.0, "conv": 0.0}
        self.stack: list[list[float]] = []  # [start, time spent in nested timers]

    def wrap(self, category: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._sync()
            self.stack.append([time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                start, nested = self.stack.pop()
                elapsed = time.perf_counter() - start
                self.totals[category] += elapsed - nested
                if self.stack:
                    self.stack[-1][1] += elapsed

        return timed

    def _sync(self) -> None:
        if self.sync:
            torch.cuda.synchronize()


@contextmanager
def _patched(timers: _Timers):
    targets = [
        (build, "_forward", "maps"),
        (build, "_transposed", "maps"),
        (build, "_subset_map", "maps"),
        (conv_op, "fused_forward", "conv"),  # inference convs with a batch norm / ReLU epilogue
        (KernelMap, "_csr", "maps"),
        (KernelMap, "transposed", "maps"),
    ]
    with ExitStack() as stack:
        for owner, name, category in targets:
            original = getattr(owner, name)
            setattr(owner, name, timers.wrap(category, original))
            stack.callback(setattr, owner, name, original)
        original_plan = KernelMap.plan

        def plan(self, kind, make, *params):
            return original_plan(self, kind, timers.wrap("maps", make), *params)

        KernelMap.plan = plan
        stack.callback(setattr, KernelMap, "plan", original_plan)
        fn_cls = conv_op.SparseConvFunction
        for name in ("forward", "backward"):
            original = fn_cls.__dict__[name]
            setattr(fn_cls, name, staticmethod(timers.wrap("conv", original.__func__)))
            stack.callback(setattr, fn_cls, name, original)
        yield


def measure(fn: Callable[[], object], device: str, repeats: int = 3) -> dict[str, float]:
    """Median seconds of ``fn`` split into ``maps``, ``conv`` and ``other`` (and ``total``)."""
    runs = []
    for _ in range(repeats):
        timers = _Timers(sync=device.startswith("cuda"))
        with _patched(timers):
            timers._sync()
            t0 = time.perf_counter()
            fn()
            timers._sync()
            total = time.perf_counter() - t0
        runs.append({**timers.totals, "total": total})
    runs.sort(key=lambda r: r["total"])
    mid = runs[len(runs) // 2]
    mid["other"] = max(mid["total"] - mid["maps"] - mid["conv"], 0.0)
    return mid
