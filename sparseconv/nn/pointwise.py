"""Layers that act on features only (coordinates unchanged): norms, activations, dropout.

Each wraps the torch layer of the same name and applies it to ``x.feats``, so state_dict keys,
``.half()``, DDP and pruning tools see ordinary torch parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from sparseconv.functional.epilogue import Epilogue
from sparseconv.nn.conv import Conv3d
from sparseconv.tensor import SparseTensor
from sparseconv.utils.stamps import stamp


class _OnFeatures:
    """Mixin placed before a torch layer: apply that layer to ``x.feats``, keep the coordinates."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_feats(super().forward(x.feats))  # type: ignore[misc]


class BatchNorm(_OnFeatures, nn.BatchNorm1d):
    """Batch norm over all points of the batch (``BatchNorm1d`` on ``[N, C]``)."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.training and torch.compiler.is_compiling():
            # a voxel count from a strided map is unknown when tracing: state (as a runtime
            # check) what batch norm asserts in eager mode, instead of failing to trace it
            torch._check(x.feats.shape[0] != 1)
        return super().forward(x)

    def can_apply_in_place(self) -> bool:
        """Inference with running statistics and no hooks: the norm is one affine map."""
        return (
            not self.training
            and not torch.is_grad_enabled()
            and self.running_mean is not None
            and not (self._forward_hooks or self._forward_pre_hooks)
        )

    def epilogue(self, relu: bool = False) -> Epilogue:
        """The norm (inference, running statistics) as a per-channel affine map, then ReLU.

        The map is kept while the statistics and parameters are unchanged (their storage and
        version counters) and autograd is off: folding them costs five small torch ops per
        layer and call."""
        scale, shift = self._folded()
        return Epilogue(scale, shift, relu)

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._fold()
        tensors = (self.running_var, self.running_mean, self.weight, self.bias)
        state = (self.eps, *(None if t is None else stamp(t) for t in tensors))
        kept = getattr(self, "_folded_state", None)
        if kept is None or kept[0] != state:
            kept = self._folded_state = (state, self._fold())
        return kept[1]

    def _fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -self.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        return scale, shift

    def apply_in_place_(self, x: SparseTensor) -> SparseTensor:
        """``x`` normalised by overwriting its features: for a tensor nobody else holds (the
        fresh output of a conv inside a ``Sequential``), where torch's ``[N, C]`` batch norm
        costs several times a fused multiply-add over the same memory."""
        self.epilogue().apply_(x.feats)
        return x


class GroupNorm(nn.GroupNorm):
    """Group norm computed per sample of the batch (statistics never mix scans)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        feats = x.feats
        out = torch.empty_like(feats)
        batch = x.coords[:, 0].long()
        for b in torch.unique(batch).tolist():
            rows = batch == b
            # [n, C] -> [1, C, n] so torch's GroupNorm normalises this sample alone
            out[rows] = super().forward(feats[rows].t().unsqueeze(0)).squeeze(0).t()
        return x.replace_feats(out)


class ReLU(_OnFeatures, nn.ReLU):
    pass


class LeakyReLU(_OnFeatures, nn.LeakyReLU):
    pass


class Dropout(_OnFeatures, nn.Dropout):
    pass


class Sequential(nn.Sequential):
    """``torch.nn.Sequential`` for layers that take and return ``SparseTensor``.

    In inference, a ``Conv3d -> BatchNorm [-> ReLU]`` run of the sequence is one conv with an
    epilogue (:mod:`sparseconv.functional.epilogue`): the norm's affine map and the ReLU are
    applied as the conv stores its output, instead of two more passes over it. Nothing outside
    the sequence can hold the conv's fresh output, so the result is the same. A conv with hooks
    (which may look at that output) runs alone, and the norm then normalises its output in place
    (:meth:`BatchNorm.apply_in_place_`).

    ``residual`` (inference; a residual block's shortcut features) makes the result
    ``relu(sequence(x) + residual)``, added and rectified in the last conv's epilogue when the
    sequence ends with a conv and its norm.
    """

    def forward(self, x, residual: torch.Tensor | None = None):  # type: ignore[override]
        modules = list(self)
        i = 0
        while i < len(modules):
            module, rest = modules[i], modules[i + 1 :]
            norm = rest[0] if rest and isinstance(rest[0], BatchNorm) else None
            if norm is not None and isinstance(module, Conv3d) and norm.can_apply_in_place():
                relu = len(rest) > 1 and is_plain_relu(rest[1])
                if _fusable(module):
                    epilogue = norm.epilogue(relu)
                    if residual is not None and len(rest) == 1:  # the last step: add, rectify
                        epilogue = Epilogue(epilogue.scale, epilogue.shift, True, residual)
                        residual = None
                    x = module(x, epilogue=epilogue)
                    i += 3 if relu else 2
                    continue
                x = norm.apply_in_place_(module(x))
                i += 2
                continue
            x = module(x)
            i += 1
        if residual is not None:
            x = x.replace_feats(torch.relu(x.feats + residual))
        return x


def _fusable(conv: nn.Module) -> bool:
    """A plain ``Conv3d`` (no subclass forward) whose output no hook watches. Plain forward
    pre-hooks (a voxel pruner filtering the input, a recorder) still run when the conv is
    called with an epilogue and see the same input, so they do not stop the fusion; a hook that
    sees keyword arguments could touch the epilogue, so it does."""
    return type(conv).forward is Conv3d.forward and not (
        conv._forward_hooks or conv._forward_pre_hooks_with_kwargs
    )


def is_plain_relu(module: nn.Module) -> bool:
    """A ``ReLU`` that no hook watches (its effect may move into a conv's epilogue)."""
    return type(module) is ReLU and not (module._forward_hooks or module._forward_pre_hooks)
