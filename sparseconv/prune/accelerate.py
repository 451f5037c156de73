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
from sparseconv.nn import Conv3d, SemiStructuredConv3d
from sparseconv.nn.semi_structured import Packer
from sparseconv.prune.tracing import layer_inputs
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
    model: nn.Module,
    example: SparseTensor,
    rounds: int = 20,
    min_speedup: float = 1.05,
    pack: Packer = semi_structured.pack,
) -> AccelerationReport:
    """Swap 2:4-sparse ``Conv3d`` layers of ``model`` for :class:`SemiStructuredConv3d`.

    A layer is swapped when its median per-round speed-up on ``example``'s activations is at
    least ``min_speedup`` and its output matches the dense one; every other layer stays a plain
    ``Conv3d``, with the reason in the report. Swapped layers keep their parameters, masks and
    ``state_dict`` keys, infer on the sparse GEMM in eval mode and train densely. Layers that
    already are ``SemiStructuredConv3d`` are measured again. Puts ``model`` in eval mode.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not min_speedup > 0:
        raise ValueError(f"min_speedup must be > 0, got {min_speedup}")
    model.eval()
    report = AccelerationReport()
    eligible = {}
    for name, mod in list(model.named_modules()):
        if isinstance(mod, SemiStructuredConv3d):
            mod = _replace(model, name, mod.to_conv())
        if not isinstance(mod, Conv3d):
            continue
        reason = semi_structured.unsupported_reason(mod.weight)
        if reason is None:
            eligible[name] = mod
        else:
            report.layers[name] = LayerPath(False, reason)
    if eligible:
        inputs = layer_inputs(model, example, eligible)
        for name, conv in eligible.items():
            path, layer = _choose(conv, inputs[name], rounds, min_speedup, pack)
            report.layers[name] = path
            if path.sparse:
                _replace(model, name, layer)
    return _in_module_order(report, model)


def _replace(model: nn.Module, name: str, layer: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not child:
        raise ValueError("accelerate_nm swaps layers inside a model, not the model itself")
    setattr(parent, child, layer)
    return layer


def _choose(
    conv: Conv3d, x: SparseTensor, rounds: int, min_speedup: float, pack: Packer
) -> tuple[LayerPath, SemiStructuredConv3d | None]:
    layer = SemiStructuredConv3d.from_conv(conv, pack)
    try:
        layer.packed()
    except ValueError as err:
        return LayerPath(False, str(err)), None
    with torch.no_grad():
        ref, got = conv(x).feats.float(), layer(x).feats.float()
        err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
        if err > 1e-2:
            reason = f"sparse output differs from dense (max rel. error {err:.2g})"
            return LayerPath(False, reason), None
        # 10 calls per sample: one ~0.1 ms layer per sample would time the device sync
        contenders = {"dense": lambda: conv(x), "sparse": lambda: layer(x)}
        times = interleaved(contenders, rounds, device=x.feats.device.type, inner=10)
    speedup = ratio(times, "sparse", "dense")
    d_ms, s_ms = median(times["dense"]) * 1e3, median(times["sparse"]) * 1e3
    timing = f"{s_ms:.3f} ms sparse vs {d_ms:.3f} ms dense ({speedup:.2f}x)"
    if speedup >= min_speedup:
        return LayerPath(True, timing, d_ms, s_ms), layer
    return LayerPath(False, f"not faster: {timing}", d_ms, s_ms), None


def _in_module_order(report: AccelerationReport, model: nn.Module) -> AccelerationReport:
    """Report entries in module order."""
    order = [n for n, _ in model.named_modules() if n in report.layers]
    report.layers = {n: report.layers[n] for n in order}
    return report
