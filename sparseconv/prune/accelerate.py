"""Run 2:4-pruned layers on the semi-structured sparse GEMM where that is measurably faster.

Sparse tensor cores halve the multiply work of a 2:4 weight, but a sparse conv's GEMMs are tall
and skinny (``[pairs, Cin] x [Cin, Cout]`` with Cin, Cout of 16-256) and the compressed path adds
its own overheads, so the speed-up is not guaranteed. :func:`accelerate_nm` therefore times every
eligible layer on the real input (dense and sparse interleaved), keeps the sparse path only where
it wins, and reports for every layer which path it runs and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sparseconv.functional import semi_structured
from sparseconv.nn import Conv3d
from sparseconv.tensor import SparseTensor
from sparseconv.utils.timing import interleaved, median, ratio


@dataclass
class LayerPath:
    sparse: bool
    reason: str
    dense_ms: float | None = None
    sparse_ms: float | None = None


@dataclass
class AccelerationReport:
    layers: dict[str, LayerPath] = field(default_factory=dict)

    @property
    def accelerated(self) -> list[str]:
        return [name for name, p in self.layers.items() if p.sparse]

    def __str__(self) -> str:
        lines = [f"2:4 sparse GEMM: {len(self.accelerated)} of {len(self.layers)} conv layers"]
        for name, p in self.layers.items():
            lines.append(f"  {name}: {'sparse' if p.sparse else 'dense'} ({p.reason})")
        return "\n".join(lines)


def accelerate_nm(
    model: nn.Module, example: SparseTensor, rounds: int = 20, min_speedup: float = 1.05
) -> AccelerationReport:
    """Switch 2:4-sparse ``Conv3d`` layers of ``model`` to the semi-structured sparse GEMM.

    Puts ``model`` in eval mode (the compressed weights are an inference snapshot; ``model.train()``
    drops them — call again after changing the weights). A layer switches when its median
    per-round speed-up on ``example``'s activations is at least ``min_speedup`` and its output
    matches the dense one; every other layer stays dense, with the reason in the report.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    model.eval()
    report = AccelerationReport()
    eligible = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, Conv3d):
            continue
        mod.packed_weight = None
        reason = semi_structured.unsupported_reason(mod.weight)
        if reason is None:
            eligible[name] = mod
        else:
            report.layers[name] = LayerPath(False, reason)
    if not eligible:
        return report
    inputs = _layer_inputs(model, example, eligible)
    for name, mod in eligible.items():
        report.layers[name] = _choose(mod, inputs[name], rounds, min_speedup)
    return _in_module_order(report, model)


def _layer_inputs(
    model: nn.Module, example: SparseTensor, layers: dict[str, Conv3d]
) -> dict[str, SparseTensor]:
    """The input each layer sees in one forward pass of ``example`` (maps cached alongside)."""
    seen: dict[str, SparseTensor] = {}
    hooks = [
        mod.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, args[0]))
        for name, mod in layers.items()
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _choose(layer: Conv3d, x: SparseTensor, rounds: int, min_speedup: float) -> LayerPath:
    try:
        packed = semi_structured.pack(layer.weight)
    except ValueError as err:
        return LayerPath(False, str(err))

    def dense():
        layer.packed_weight = None
        return layer(x)

    def sparse():
        layer.packed_weight = packed
        return layer(x)

    with torch.no_grad():
        ref, got = dense().feats.float(), sparse().feats.float()
        err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
        if err > 1e-2:
            layer.packed_weight = None
            return LayerPath(False, f"sparse output differs from dense (max rel. error {err:.2g})")
        # 10 calls per sample: one ~0.1 ms layer per sample would time the device sync
        times = interleaved({"dense": dense, "sparse": sparse}, rounds, device="cuda", inner=10)
    speedup = ratio(times, "sparse", "dense")
    d_ms, s_ms = median(times["dense"]) * 1e3, median(times["sparse"]) * 1e3
    if speedup >= min_speedup:
        layer.packed_weight = packed
        return LayerPath(True, f"{s_ms:.3f} ms vs {d_ms:.3f} ms dense ({speedup:.2f}x)", d_ms, s_ms)
    layer.packed_weight = None
    return LayerPath(
        False,
        f"not faster: {s_ms:.3f} ms sparse vs {d_ms:.3f} ms dense ({speedup:.2f}x)",
        d_ms,
        s_ms,
    )


def _in_module_order(report: AccelerationReport, model: nn.Module) -> AccelerationReport:
    """Report entries in module order."""
    order = [n for n, _ in model.named_modules() if n in report.layers]
    report.layers = {n: report.layers[n] for n in order}
    return report
