"""``SemiStructuredConv3d``: a ``Conv3d`` whose inference runs on the 2:4 sparse GEMM.

:func:`sparseconv.prune.accelerate_nm` swaps it in for the layers where it measured faster; the
core ``Conv3d`` and ``functional.conv3d`` know nothing about it. Its state is the ordinary
``weight`` (and ``bias``) parameter, so ``state_dict`` keys are those of ``Conv3d`` and ``.to()``,
``.half()`` and checkpoints behave as for any layer. The compressed operand is derived state:
PyTorch's semi-structured tensors do not survive ``.to()`` or ``state_dict`` as buffers, so it
is rebuilt from the weight whenever the weight's device, dtype or version (any in-place update:
an optimiser step, ``load_state_dict``) differs from the one it was packed from. It can never
be stale. Training and any call that needs gradients run the dense conv.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from sparseconv.functional import semi_structured
from sparseconv.functional.conv import semi_structured_conv3d
from sparseconv.nn.conv import Conv3d
from sparseconv.tensor import SparseTensor
from sparseconv.utils.stamps import stamp

Packer = Callable[[torch.Tensor], list[torch.Tensor]]


class SemiStructuredConv3d(Conv3d):
    """``Conv3d`` with 2:4-sparse weights that infers on sparse tensor cores (see module doc).

    ``pack`` turns ``[K, Cin, Cout]`` into per-offset ``[Cout, Cin]`` operands for ``F.linear``
    (default: :func:`sparseconv.functional.semi_structured.pack`, CUDA only).
    """

    def __init__(self, *args, pack: Packer = semi_structured.pack, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pack = pack
        self._packed: tuple[tuple, list[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def from_conv(cls, conv: Conv3d, pack: Packer = semi_structured.pack) -> SemiStructuredConv3d:
        """``conv`` as this class: the same parameters, buffers (masks) and hooks, not copies."""
        layer = _recast(conv, cls)
        layer.pack = pack
        layer._packed = None
        return layer

    def packed(self) -> list[torch.Tensor]:
        """The compressed operands of the current weight (re-packed when it changed).

        A mask pre-hook multiplies the weight in place on every call, which bumps its version
        without changing it; then the weight is compared with the one packed, not re-packed.
        """
        w = self.weight.detach()
        signature = stamp(w)
        if self._packed is not None and self._packed[0] != signature:
            source = self._packed[2]
            if source.shape == w.shape and source.device == w.device and torch.equal(source, w):
                self._packed = (signature, *self._packed[1:])
        if self._packed is None or self._packed[0] != signature:
            self._packed = (signature, self.pack(w), w.clone())
        return self._packed[1]

    def forward(self, x: SparseTensor) -> SparseTensor:
        needs_grad = torch.is_grad_enabled() and (
            self.weight.requires_grad or x.feats.requires_grad
        )
        if self.training or needs_grad:
            return super().forward(x)
        return semi_structured_conv3d(
            x, self.weight, self.packed(), self.bias, self.kernel_size, self.stride,
            self.dilation, transposed=self.transposed, downsample_mode=self.downsample_mode,
            padding=self.padding, spatial_shape=self.spatial_shape, submanifold=self.submanifold,
            offsets=self.offsets(),
        )  # fmt: skip

    def to_conv(self) -> Conv3d:
        """This layer as a plain ``Conv3d`` (the same parameters, buffers and hooks)."""
        conv = _recast(self, Conv3d)
        del conv.pack, conv._packed
        return conv


def _recast(module: torch.nn.Module, cls: type) -> torch.nn.Module:
    """A new ``cls`` instance holding ``module``'s state: its own containers, shared tensors."""
    new = cls.__new__(cls)
    new.__dict__.update({k: copy.copy(v) if isinstance(v, dict) else v
                         for k, v in module.__dict__.items()})  # fmt: skip
    return new
