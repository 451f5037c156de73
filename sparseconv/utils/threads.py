"""How many CPU threads sparseconv's work should use right now: fewer when the machine is busy.

A parallel region shares its work between threads and ends at a barrier. When another process
occupies a core, one of two threads is descheduled for whole time slices while its partner
waits at the barrier (spinning, on the core the first one needs), so a 2-thread run beside one
busy process was measured slower than a 1-thread run. :func:`available_threads` therefore reads
the number of runnable tasks (``procs_running`` in ``/proc/stat``, about 10 us, re-read at most
every 20 ms; this process's own runnable threads do not count) and gives
``min(torch.get_num_threads(), idle cores)``, at least 1. sparseconv's C kernels take it for
every call: their results do not depend on the thread count, so adapting costs nothing in
reproducibility. torch's own ops keep torch's setting (their reductions split sums by thread,
so changing it with the load would change results run to run); :func:`adaptive_threads` is an
opt-in context that sets torch's count too, for a user who prefers speed on a busy machine to
bit-identical reruns. ``set_policy("fixed")`` (or ``SPARSECONV_THREADS=fixed``) turns the cap
off.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

T = TypeVar("T")

POLICIES = ("adaptive", "fixed")
_REFRESH_S = 0.02
_state = {"policy": os.environ.get("SPARSECONV_THREADS", "adaptive"), "at": -1.0, "idle": 0}


def set_policy(policy: str) -> None:
    """``"adaptive"`` (default: fewer threads while other processes use the cores) or
    ``"fixed"`` (always ``torch.get_num_threads()``)."""
    if policy not in POLICIES:
        raise ValueError(f"thread policy must be one of {POLICIES}, got {policy!r}")
    _state["policy"] = policy
    _state["at"] = -1.0


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _runnable() -> int | None:
    """Runnable tasks on the machine, this thread included (None where /proc/stat is absent)."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _own_running() -> int:
    """Threads of this process that are runnable now (this one, and OpenMP workers that still
    spin after a parallel region: they are ours, not another process's load)."""
    count = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    state = f.read().rpartition(")")[2].split()[0]
            except (OSError, IndexError):
                continue
            count += state == "R"
    except OSError:
        return 1
    return max(count, 1)


def idle_cores() -> int:
    """Cores not taken by another process's runnable task (re-read at most every 20 ms)."""
    now = time.monotonic()
    if now - _state["at"] > _REFRESH_S:
        running = _runnable()
        cores = _cores()
        others = 0 if running is None else max(running - _own_running(), 0)
        _state["idle"] = max(1, cores - others)
        _state["at"] = now
    return int(_state["idle"])


def available_threads() -> int:
    """Threads for the next piece of work: torch's setting, capped by the idle cores."""
    wanted = torch.get_num_threads()
    if _state["policy"] != "adaptive" or wanted <= 1:
        return wanted
    return max(1, min(wanted, idle_cores()))


@contextmanager
def adaptive_threads() -> Iterator[None]:
    """Run the block with torch's thread count set to :func:`available_threads`."""
    saved = torch.get_num_threads()
    chosen = available_threads()
    if chosen != saved:
        torch.set_num_threads(chosen)
    try:
        yield
    finally:
        if chosen != saved:
            torch.set_num_threads(saved)


def run_inference_threads(module: torch.nn.Module, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` under :func:`adaptive_threads` for a module in eval mode, torch's setting
    in training mode.

    In eval mode the ops around sparse convs (norms with running statistics, activations,
    concatenations) are elementwise, so their results do not depend on the thread count; in
    training mode batch statistics are reductions that do, and a run must stay reproducible.
    Compiled code calls ``fn`` directly: a graph cannot set threads, and a ``with`` block around
    a graph break would make the compiler trace the thread logic itself.
    """
    if module.training or torch.compiler.is_compiling():
        return fn(*args)
    with adaptive_threads():
        return fn(*args)
