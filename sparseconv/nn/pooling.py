"""Pooling: global (per scan) and local strided max/avg pooling over a kernel map."""

from __future__ import annotations

import torch
from torch import nn

from sparseconv.maps.build import build_kernel_map
from sparseconv.maps.kernel_map import KernelMap
from sparseconv.maps.offsets import as_triple
from sparseconv.tensor import SparseTensor


def _per_batch(x: SparseTensor, reduce: str) -> torch.Tensor:
    batch = x.coords[:, 0].long()
    n = x.batch_size
    out = x.feats.new_zeros((n, x.feats.shape[1]))
    index = batch[:, None].expand_as(x.feats)
    return out.scatter_reduce(0, index, x.feats, reduce=reduce, include_self=False)


def pool_features(feats: torch.Tensor, kmap: KernelMap, reduce: str) -> torch.Tensor:
    """``[kmap.n_out, C]``: ``reduce`` (``"amax"``, ``"mean"``) over each output's window."""
    out = feats.new_zeros((kmap.n_out, feats.shape[1]))
    index = kmap.out_idx[:, None].expand(-1, feats.shape[1])
    return out.scatter_reduce(0, index, feats[kmap.in_idx], reduce=reduce, include_self=False)


class GlobalAvgPool(nn.Module):
    """``[B, C]``: the mean feature of each scan of the batch."""

    def forward(self, x: SparseTensor) -> torch.Tensor:
        return _per_batch(x, "mean")


class GlobalMaxPool(nn.Module):
    """``[B, C]``: the channel-wise maximum of each scan of the batch."""

    def forward(self, x: SparseTensor) -> torch.Tensor:
        return _per_batch(x, "amax")


class _LocalPool(nn.Module):
    reduce = "amax"

    def __init__(self, kernel_size=2, stride=2, dilation=1, downsample_mode="minkowski") -> None:
        super().__init__()
        self.kernel_size = as_triple(kernel_size, "kernel_size")
        self.stride = as_triple(stride, "stride")
        self.dilation = as_triple(dilation, "dilation")
        self.downsample_mode = downsample_mode

    def forward(self, x: SparseTensor) -> SparseTensor:
        kmap = build_kernel_map(
            x.coords, self.kernel_size, self.stride, self.dilation,
            downsample_mode=self.downsample_mode, tensor_stride=x.stride, cache=x.cache,
        )  # fmt: skip
        out = pool_features(x.feats, kmap, self.reduce)
        stride = tuple(a * b for a, b in zip(x.stride, self.stride))
        return SparseTensor(out, kmap.out_coords, stride, cache=x.cache, check=False)


class MaxPool3d(_LocalPool):
    """Channel-wise max over the kernel window of every output (outputs as a strided conv's)."""

    reduce = "amax"


class AvgPool3d(_LocalPool):
    """Mean over the inputs present in the kernel window (empty cells do not count)."""

    reduce = "mean"
