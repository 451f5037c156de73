"""Registry of dataflows and the per-map-shape autotuner that picks one.

A dataflow is three functions (forward, input gradient, weight gradient) over a ``KernelMap``.
``"auto"`` times every dataflow that can run on the device on the first call for a given map
shape (the median of a few runs, forward only) and caches the winner; ``set_autotune(False)``
turns tuning off (then ``DEFAULTS`` decides: ``cpu_implicit_gemm`` on CPU where it can run,
i.e. float32 / float16 / bfloat16 with a C compiler, else ``torch``; ``triton_implicit_gemm`` on
CUDA).
``deterministic=True`` restricts the choice to dataflows without atomics.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparseconv.functional import dataflow_cpu as dc
from sparseconv.functional import dataflow_torch as dt
from sparseconv.functional import dataflow_triton as dtr
from sparseconv.maps.kernel_map import KernelMap


def triton_available(device: torch.device) -> bool:
    """Triton kernels run on CUDA, and on CPU only under ``TRITON_INTERPRET=1``."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def _triton_unsupported(x: torch.Tensor) -> str:
    if triton_available(x.device):
        return ""
    return f"it needs a CUDA device (or TRITON_INTERPRET=1 on CPU); got {x.device}"


def _runs_anywhere(x: torch.Tensor) -> str:
    return ""


@dataclass(frozen=True)
class Dataflow:
    name: str
    forward: Callable[[torch.Tensor, torch.Tensor, KernelMap], torch.Tensor]
    backward_input: Callable[[torch.Tensor, torch.Tensor, KernelMap], torch.Tensor]
    backward_weight: Callable[[torch.Tensor, torch.Tensor, KernelMap], torch.Tensor]
    deterministic: bool
    needs_triton: bool
    # why it cannot run on these features ('' when it can)
    unsupported: Callable[[torch.Tensor], str] = _runs_anywhere

    def tunable(self, x: torch.Tensor) -> bool:
        """Usable here and worth timing (interpreted Triton on CPU is for tests only)."""
        return not self.unsupported(x) and (not self.needs_triton or x.device.type == "cuda")


DATAFLOWS: dict[str, Dataflow] = {
    "torch": Dataflow("torch", dt.forward, dt.backward_input, dt.backward_weight, False, False),
    "cpu_implicit_gemm": Dataflow(
        "cpu_implicit_gemm",
        dc.forward,
        dc.backward_input,
        dc.backward_weight,
        True,
        False,
        dc.unsupported,
    ),
    "triton_gather_scatter": Dataflow(
        "triton_gather_scatter",
        dtr.gs_forward,
        dtr.gs_backward_input,
        dtr.backward_weight,
        False,
        True,
        _triton_unsupported,
    ),
    "triton_implicit_gemm": Dataflow(
        "triton_implicit_gemm",
        dtr.ig_forward,
        dtr.ig_backward_input,
        dtr.backward_weight,
        True,
        True,
        _triton_unsupported,
    ),
}
# what runs when the autotuner is off, in order of preference (the first usable one)
DEFAULTS = {"cuda": ["triton_implicit_gemm", "torch"], "cpu": ["cpu_implicit_gemm", "torch"]}

_AUTOTUNE = {"enabled": True}
_CHOICES: dict[tuple, str] = {}


def set_autotune(enabled: bool) -> None:
    """Turn the dataflow autotuner on or off (off: a fixed default per device)."""
    _AUTOTUNE["enabled"] = bool(enabled)
    _CHOICES.clear()


def resolve(
    name: str, x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, deterministic: bool
) -> Dataflow:
    """The dataflow to run: a named one (checked to be usable here) or the autotuner's pick."""
    if name != "auto":
        return _named(name, x, deterministic)
    candidates = [f for f in DATAFLOWS.values() if f.tunable(x)]
    if deterministic:
        candidates = [f for f in candidates if f.deterministic]
        if not candidates and triton_available(x.device):  # interpreted: slow but correct
            candidates = [DATAFLOWS["triton_implicit_gemm"]]
        if not candidates:
            reasons = "; ".join(
                f"{f.name}: {f.unsupported(x)}" for f in DATAFLOWS.values() if f.deterministic
            )
            raise ValueError(f"deterministic=True has no usable dataflow here ({reasons})")
    if len(candidates) == 1 or not _AUTOTUNE["enabled"]:
        by_name = {c.name: c for c in candidates}
        preferred = DEFAULTS.get(x.device.type, ["torch"])
        return next((by_name[n] for n in preferred if n in by_name), candidates[0])
    key = (x.device.type, x.dtype, x.shape[1], weight.shape[2], kmap.kernel_volume,
           kmap.submanifold, _bucket(kmap.n_in), _bucket(kmap.n_out), deterministic)  # fmt: skip
    if key not in _CHOICES:
        _CHOICES[key] = _fastest(candidates, x, weight, kmap)
    return DATAFLOWS[_CHOICES[key]]


def _named(name: str, x: torch.Tensor, deterministic: bool) -> Dataflow:
    if name not in DATAFLOWS:
        raise ValueError(f"dataflow must be 'auto' or one of {sorted(DATAFLOWS)}, got {name!r}")
    flow = DATAFLOWS[name]
    reason = flow.unsupported(x)
    if reason:
        raise ValueError(f"dataflow {name!r} cannot run here: {reason}")
    if deterministic and not flow.deterministic:
        raise ValueError(
            f"dataflow {name!r} uses atomics; deterministic=True needs an implicit-GEMM "
            "dataflow or auto"
        )
    return flow


def _bucket(n: int) -> int:
    return max(n, 1).bit_length()


def _fastest(candidates: list[Dataflow], x, weight, kmap) -> str:
    timings = {}
    with torch.no_grad():
        for flow in candidates:
            runs = []
            for _ in range(3):
                if x.is_cuda:
                    torch.cuda.synchronize(x.device)
                t0 = time.perf_counter()
                flow.forward(x, weight, kmap)
                if x.is_cuda:
                    torch.cuda.synchronize(x.device)
                runs.append(time.perf_counter() - t0)
            timings[flow.name] = sorted(runs)[1]
    return min(timings, key=timings.get)
