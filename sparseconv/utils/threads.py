"""How many CPU threads sparseconv's work should use right now: fewer when the machine is busy.

A parallel region shares its work between threads and ends at a barrier. When another process
occupies a core, one of two threads is descheduled for whole time slices while its partner
waits at the barrier (spinning, on the core the first one needs), so a 2-thread run beside one
busy process was measured slower than a 1-thread run. :func:`available_threads` therefore reads
the number of runnable tasks (``procs_running`` in ``/proc/stat``, about 10 us, re-read at most
every 20 ms) and gives ``min(torch.get_num_threads(), idle cores)``, at least 1. The C kernels
take it for every call, and :func:`adaptive_threads` sets torch's own thread count for a block
(the models wrap their forward pass in it). ``set_policy("fixed")`` (or the environment variable
``SPARSECONV_THREADS=fixed``) always uses ``torch.get_num_threads()``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

POLICIES = ("adaptive", "fixed")
_REFRESH_S = 0.02
_state = {"policy": os.environ.get("SPARSECONV_THREADS", "adaptive"), "at": -1.0, "idle": 0}
F = TypeVar("F", bound=Callable)


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


def idle_cores() -> int:
    """Cores not taken by another runnable task (re-read at most every 20 ms)."""
    now = time.monotonic()
    if now - _state["at"] > _REFRESH_S:
        running = _runnable()
        cores = _cores()
        _state["idle"] = cores if running is None else max(1, cores - max(running - 1, 0))
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


def with_adaptive_threads(fn: F) -> F:
    """Decorator form of :func:`adaptive_threads`."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with adaptive_threads():
            return fn(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
