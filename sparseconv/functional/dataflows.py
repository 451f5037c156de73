"""Registry of dataflows and the per-map-shape autotuner that picks one.

A dataflow is three functions (forward, input gradient, weight gradient) over a ``KernelMap``,
named ``<backend>_<algorithm>``. ``torch`` is the plain-torch reference: its planner
(:func:`sparseconv.functional.dataflow_torch.choose_algorithm`) picks ``torch_output_blocks`` or
``torch_gather_scatter`` per map, direction and channel count, and both are registered so that
a test or a user can name one. ``"auto"`` times the autotuned dataflows that can run on the
device on the first call for a given map shape (the median of a few runs, forward only) and
keeps the winner in :data:`AUTOTUNE`; with tuning off, :data:`DEFAULTS` decides
(``cpu_implicit_gemm`` on CPU where it can run, i.e. float32 / float16 / bfloat16 with a C
compiler, else ``torch``; ``triton_implicit_gemm`` on CUDA). ``deterministic=True`` restricts
the choice to dataflows without atomics.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from sparseconv.functional import dataflow_cpu, dataflow_torch, dataflow_triton
from sparseconv.kernels import cpu_library
from sparseconv.maps.kernel_map import KernelMap

logger = logging.getLogger("sparseconv.autotune")

Kernel = Callable[[torch.Tensor, torch.Tensor, KernelMap], torch.Tensor]


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


@dataclass(frozen=True, kw_only=True)
class Dataflow:
    """One way to run a sparse conv; ``unsupported(x)`` says why it cannot run on ``x``."""

    name: str
    backend: str  # "torch", "c" (the fused CPU kernels) or "triton"
    algorithm: str  # "planned", "gather_scatter", "output_blocks" or "implicit_gemm"
    forward: Kernel
    backward_input: Kernel
    backward_weight: Kernel
    deterministic: bool  # no atomics: the same inputs give the same bits
    autotuned: bool = True  # offered to "auto" (the torch planner covers its own algorithms)
    unsupported: Callable[[torch.Tensor], str] = _runs_anywhere
    # forward(x, weight, kmap, epilogue) applying an inference Epilogue as it stores (or None)
    fused_forward: Callable | None = None

    def tunable(self, x: torch.Tensor) -> bool:
        """Usable here and worth timing (interpreted Triton on CPU is for tests only)."""
        if not self.autotuned or self.unsupported(x):
            return False
        return self.backend != "triton" or x.device.type == "cuda"


def _torch_flow(name: str, algorithm: str | None, unsupported=_runs_anywhere) -> Dataflow:
    return Dataflow(
        name=name,
        backend="torch",
        algorithm=algorithm or "planned",
        forward=partial(dataflow_torch.forward, algorithm=algorithm),
        backward_input=partial(dataflow_torch.backward_input, algorithm=algorithm),
        backward_weight=dataflow_torch.backward_weight,
        deterministic=False,
        autotuned=algorithm is None,
        unsupported=unsupported,
    )


def _triton_flow(algorithm: str, forward: Kernel, backward_input: Kernel, deterministic: bool):
    """Both Triton dataflows share the deterministic per-offset weight-gradient kernel."""
    return Dataflow(
        name=f"triton_{algorithm}",
        backend="triton",
        algorithm=algorithm,
        forward=forward,
        backward_input=backward_input,
        backward_weight=dataflow_triton.backward_weight,
        deterministic=deterministic,
        unsupported=_triton_unsupported,
    )


DATAFLOWS: dict[str, Dataflow] = {
    flow.name: flow
    for flow in (
        _torch_flow("torch", None),
        _torch_flow("torch_gather_scatter", "gather_scatter"),
        _torch_flow(
            "torch_output_blocks", "output_blocks", dataflow_torch.output_blocks_unsupported
        ),
        Dataflow(
            name="cpu_implicit_gemm",
            backend="c",
            algorithm="implicit_gemm",
            forward=dataflow_cpu.forward,
            backward_input=dataflow_cpu.backward_input,
            backward_weight=dataflow_cpu.backward_weight,
            deterministic=True,
            unsupported=dataflow_cpu.unsupported,
            fused_forward=dataflow_cpu.fused_forward,
        ),
        _triton_flow(
            "gather_scatter",
            dataflow_triton.gs_forward,
            dataflow_triton.gs_backward_input,
            deterministic=False,
        ),
        _triton_flow(
            "implicit_gemm",
            dataflow_triton.ig_forward,
            dataflow_triton.ig_backward_input,
            deterministic=True,
        ),
    )
}
# what runs when the autotuner is off, in order of preference (the first usable one)
DEFAULTS = {"cuda": ["triton_implicit_gemm", "torch"], "cpu": ["cpu_implicit_gemm", "torch"]}
# how much faster than the device's default another dataflow must time to be chosen
MARGIN = 1.15


class AutotuneCache:
    """The autotuner's choices, one per map shape and device; thread-safe, savable, pinnable.

    A key names the device (type and index: two GPUs may differ), dtype, channels, kernel
    volume, whether the map is submanifold, the map's size bucket and the determinism flag.
    Every new choice is logged (logger ``sparseconv.autotune``, INFO) with the timings behind it.
    ``save``/``load`` write and read the choices as JSON, so a run (or every rank of a DDP job)
    can pin them instead of timing again; a loaded choice is used as it is.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._choices: dict[str, str] = {}
        # resolve()'s answers by its raw inputs: a tuple lookup (2 us) instead of the
        # candidates, the string key and the lock (10 us) for every conv on every call
        self.resolved: dict[tuple, Dataflow] = {}
        self._lock = threading.RLock()

    @staticmethod
    def key(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, deterministic: bool) -> str:
        index = x.device.index
        if index is None:
            index = torch.cuda.current_device() if x.device.type == "cuda" else 0
        parts = (f"{x.device.type}:{index}", str(x.dtype).removeprefix("torch."), x.shape[1],
                 weight.shape[2], kmap.kernel_volume, int(kmap.submanifold),
                 _bucket(kmap.n_in), _bucket(kmap.n_out), int(deterministic))  # fmt: skip
        return "|".join(str(p) for p in parts)

    def choose(
        self, key: str, candidates: list[Dataflow], time_one: Callable, preferred: str | None = None
    ) -> Dataflow:
        """The cached choice for ``key``, else the fastest of ``candidates`` by ``time_one``;
        ``preferred`` (the device's default) stays unless another is :data:`MARGIN` faster.

        The margin matters end to end: dataflows read different layouts of a map (neighbour
        table or CSR lists), derived once per map and scan, so a noise-driven flip between two
        layers on one map makes every scan derive both (the dense MinkUNet of the demo ran 96 ms
        end to end in one `bench prune` run and 66 ms in another, docs/benchmarks.md).
        """
        by_name = {c.name: c for c in candidates}
        with self._lock:
            name = self._choices.get(key)
            if name in by_name:
                return by_name[name]
            timings = {c.name: time_one(c) for c in candidates}
            name = min(timings, key=timings.get)
            if preferred in timings and timings[name] * MARGIN > timings[preferred]:
                name = preferred
            self._choices[key] = name
        shown = ", ".join(f"{n} {t * 1e3:.3g} ms" for n, t in timings.items())
        logger.info("autotune %s -> %s (%s)", key, name, shown)
        return by_name[name]

    @property
    def choices(self) -> dict[str, str]:
        with self._lock:
            return dict(self._choices)

    def pin(self, key: str, name: str) -> None:
        """Use dataflow ``name`` for ``key`` from now on (no timing)."""
        if name not in DATAFLOWS:
            raise ValueError(f"unknown dataflow {name!r}; known: {sorted(DATAFLOWS)}")
        with self._lock:
            self._choices[key] = name
            self.resolved.clear()

    def clear(self) -> None:
        with self._lock:
            self._choices.clear()
            self.resolved.clear()

    def remember(self, raw: tuple, flow: Dataflow) -> None:
        """Keep ``resolve``'s answer for ``raw`` until the choices change."""
        with self._lock:
            self.resolved[raw] = flow

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"version": 1, "choices": self.choices}, indent=1))
        return path

    def load(self, path: str | os.PathLike) -> None:
        """Pin every choice in the JSON file at ``path`` (written by :meth:`save`)."""
        try:
            data = json.loads(Path(path).read_text())
            choices = data["choices"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not an autotune file written by save(): {err}") from err
        if not isinstance(choices, dict):
            raise ValueError(f"{path}: 'choices' must map keys to dataflow names")
        for key, name in choices.items():
            self.pin(str(key), name)


AUTOTUNE = AutotuneCache()


def set_autotune(enabled: bool) -> None:
    """Turn the dataflow autotuner on or off (off: a fixed default per device); clears choices."""
    AUTOTUNE.enabled = bool(enabled)
    AUTOTUNE.clear()


def resolve(
    name: str, x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, deterministic: bool
) -> Dataflow:
    """The dataflow to run: a named one (checked to be usable here) or the autotuner's pick."""
    if name != "auto":
        return _named(name, x, deterministic)
    raw = (x.device, x.dtype, x.shape[1], weight.shape[2], kmap.kernel_volume, kmap.submanifold,
           _bucket(kmap.n_in), _bucket(kmap.n_out), deterministic, AUTOTUNE.enabled,
           os.environ.get("TRITON_INTERPRET"), cpu_library.available(), len(DATAFLOWS))  # fmt: skip
    found = AUTOTUNE.resolved.get(raw)
    if found is None:
        found = _resolve_auto(x, weight, kmap, deterministic)
        AUTOTUNE.remember(raw, found)
    return found


def _resolve_auto(
    x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, deterministic: bool
) -> Dataflow:
    candidates = _candidates(x, deterministic)
    if len(candidates) == 1 or not AUTOTUNE.enabled:
        by_name = {c.name: c for c in candidates}
        preferred = DEFAULTS.get(x.device.type, ["torch"])
        return next((by_name[n] for n in preferred if n in by_name), candidates[0])
    key = AutotuneCache.key(x, weight, kmap, deterministic)
    preferred = next(
        (n for n in DEFAULTS.get(x.device.type, []) if any(c.name == n for c in candidates)), None
    )
    return AUTOTUNE.choose(key, candidates, partial(_median_time, x=x, weight=weight, kmap=kmap),
                           preferred)  # fmt: skip


def _candidates(x: torch.Tensor, deterministic: bool) -> list[Dataflow]:
    """The dataflows "auto" may run on ``x`` (asked once per layer shape: resolve remembers)."""
    candidates = [f for f in DATAFLOWS.values() if f.tunable(x)]
    if not deterministic:
        return candidates
    candidates = [f for f in candidates if f.deterministic]
    if not candidates and triton_available(x.device):  # interpreted: slow but correct
        candidates = [DATAFLOWS["triton_implicit_gemm"]]
    if not candidates:
        reasons = "; ".join(
            f"{f.name}: {f.unsupported(x)}" for f in DATAFLOWS.values() if f.deterministic
        )
        raise ValueError(f"deterministic=True has no usable dataflow here ({reasons})")
    return candidates


def _named(name: str, x: torch.Tensor, deterministic: bool) -> Dataflow:
    check_name(name)
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


def check_name(name: str) -> str:
    """``name`` if it is ``"auto"`` or a registered dataflow, else a ValueError listing them."""
    if name != "auto" and name not in DATAFLOWS:
        raise ValueError(f"dataflow must be 'auto' or one of {sorted(DATAFLOWS)}, got {name!r}")
    return name


def _bucket(n: int) -> int:
    return max(n, 1).bit_length()


def _median_time(flow: Dataflow, x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> float:
    runs = []
    with torch.no_grad():
        for _ in range(3):
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            t0 = time.perf_counter()
            flow.forward(x, weight, kmap)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            runs.append(time.perf_counter() - t0)
    return sorted(runs)[1]
