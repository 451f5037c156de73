"""``Epilogue``: what follows a conv at inference, applied where the conv stores its output.

An inference network runs conv -> batch norm -> ReLU on every layer. With running statistics
the norm is a per-channel affine map, and each of the two extra steps is a pass over the whole
``[N, C]`` output (at width 0.25 on CPU they cost about as much as the 8-channel convs' GEMMs).
The C implicit GEMM applies ``out = max(acc * scale + shift, 0)`` to each tile of output rows
while the tile is still in cache; every other dataflow gets the same result from
:meth:`Epilogue.apply_` after the conv. Inference only: no autograd passes through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Epilogue:
    """``y = acc * scale + shift + residual``, then ``max(y, 0)`` when ``relu``; ``None`` skips
    a term. ``residual`` (``[N_out, Cout]``) is a residual block's shortcut, added before the
    block's final ReLU."""

    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    relu: bool = False
    residual: torch.Tensor | None = None

    def with_bias(self, bias: torch.Tensor | None) -> Epilogue:
        """The epilogue of ``(acc + bias)`` followed by this one: the bias folded into the shift."""
        if bias is None:
            return self
        shift = bias if self.scale is None else bias * self.scale
        if self.shift is not None:
            shift = shift + self.shift
        return Epilogue(self.scale, shift, self.relu, self.residual)

    def apply_(self, feats: torch.Tensor) -> torch.Tensor:
        """``feats`` (a fresh conv output nobody else holds) overwritten with the result."""
        if self.scale is not None and self.shift is not None:
            torch.addcmul(self.shift.to(feats.dtype), feats, self.scale.to(feats.dtype), out=feats)
        elif self.scale is not None:
            feats.mul_(self.scale.to(feats.dtype))
        elif self.shift is not None:
            feats.add_(self.shift.to(feats.dtype))
        if self.residual is not None:
            feats.add_(self.residual.to(feats.dtype))
        if self.relu:
            feats.relu_()
        return feats
