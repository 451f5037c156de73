"""Busy processes beside a benchmark: a machine that is also doing other work.

Each process spins a CPU-bound Python loop (no I/O, no memory traffic to speak of) until the
benchmark ends; every contender of a run is timed under the same load. The processes stop
themselves after ``max_seconds`` even if the benchmark dies without cleaning up.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_SPIN = (
    "import time\nend = time.monotonic() + {max_seconds}\nwhile time.monotonic() < end:\n    pass\n"
)


@contextmanager
def background_load(n: int, max_seconds: float = 3600.0) -> Iterator[list[subprocess.Popen]]:
    """Run ``n`` busy processes for the duration of the block."""
    if n < 0:
        raise ValueError(f"background load must be >= 0 processes, got {n}")
    code = _SPIN.format(max_seconds=float(max_seconds))
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
