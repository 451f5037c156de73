"""Layers that act on features only (coordinates unchanged): norms, activations, dropout.

Each wraps the torch layer of the same name and applies it to ``x.feats``, so state_dict keys,
``.half()``, DDP and pruning tools see ordinary torch parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from sparseconv.nn.conv import Conv3d
from sparseconv.tensor import SparseTensor


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

    def apply_in_place_(self, x: SparseTensor) -> SparseTensor:
        """``x`` normalised by overwriting its features: for a tensor nobody else holds (the
        fresh output of a conv inside a ``Sequential``), where torch's ``[N, C]`` batch norm
        costs several times a fused multiply-add over the same memory."""
        feats = x.feats
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -self.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        torch.addcmul(shift.to(feats.dtype), feats, scale.to(feats.dtype), out=feats)
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

    In inference, a ``BatchNorm`` right after a ``Conv3d`` of the same sequence normalises the
    conv's fresh output in place (see :meth:`BatchNorm.apply_in_place_`): nothing outside the
    sequence can hold that tensor, so the result is the same and the norm costs a fraction.
    """

    def forward(self, x):  # type: ignore[override]
        after_conv = False
        for module in self:
            if after_conv and isinstance(module, BatchNorm) and module.can_apply_in_place():
                x = module.apply_in_place_(x)
            else:
                x = module(x)
            after_conv = isinstance(module, Conv3d)
        return x
