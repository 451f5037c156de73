"""Slow, obviously-correct references used by the tests."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from sparseconv.kernels import cpu_implicit_gemm as cpu_kernels

CUDA = torch.cuda.is_available()
# where the Triton kernels run: on CUDA when there is a GPU, else interpreted on CPU tensors
TRITON_DEVICE = "cuda" if CUDA else "cpu"
# where the torch dataflow and the maps are checked
DEVICES = ["cpu", "cuda"] if CUDA else ["cpu"]
# the C kernels of the cpu_implicit_gemm dataflow build wherever a C compiler is found
# (test_cpu_kernels checks that they do); without one, their tests are skipped
needs_cpu_kernels = pytest.mark.skipif(
    not cpu_kernels.available(), reason=f"CPU kernels: {cpu_kernels.unavailable_reason()}"
)


def assert_same_map(a, b) -> None:
    """Two kernel maps are identical (any devices): pairs, offset pointer and output coordinates."""
    for name in ("in_idx", "out_idx", "offset_ptr", "out_coords"):
        assert torch.equal(getattr(a, name).cpu(), getattr(b, name).cpu()), name


def random_coords(
    n: int, extent: int = 8, batches: int = 2, seed: int = 0, stride: int = 1
) -> torch.Tensor:
    """Unique int32 coords (batch, x, y, z), multiples of ``stride``, some negative."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(-extent // 2, extent - extent // 2, (n, 3), generator=g) * stride
    b = torch.randint(0, batches, (n, 1), generator=g)
    return torch.unique(torch.cat([b, c], 1), dim=0).int()


def brute_force_pairs(in_coords, out_coords, shifts) -> list[list[tuple[int, int]]]:
    """For each shift, sorted (in, out) pairs with ``in = out + shift`` (dict lookup)."""
    where = {tuple(c): i for i, c in enumerate(in_coords.tolist())}
    result = []
    for sh in shifts:
        pairs = []
        for j, (b, x, y, z) in enumerate(out_coords.tolist()):
            i = where.get((b, x + sh[0], y + sh[1], z + sh[2]))
            if i is not None:
                pairs.append((i, j))
        result.append(pairs)
    return result


def dense_conv(feats, coords, weight, kernel_size, dilation, out_coords, centred, transposed):
    """Dense reference sampled at ``out_coords`` (tensor stride 1 on the output side for transposed).

    Forward/submanifold: ``y[o] = sum_d x[o + (d - c) * dil] W[d]`` via ``F.conv3d``;
    transposed: ``y[o] = sum_d x[o - d * dil] W[d]`` via ``F.conv_transpose3d``.
    """
    kx, ky, kz = kernel_size
    c_in, c_out = weight.shape[1], weight.shape[2]
    w = weight.reshape(kx, ky, kz, c_in, c_out)
    allc = torch.cat([coords, out_coords]).long()
    reach = max(kernel_size) * max(dilation) + 1
    lo = allc[:, 1:].amin(0) - reach
    hi = allc[:, 1:].amax(0) + reach
    size = (hi - lo + 1).tolist()
    nb = int(allc[:, 0].max()) + 1
    grid = feats.new_zeros((nb, *size, c_in))
    p = coords[:, 1:].long() - lo
    grid = grid.index_put((coords[:, 0].long(), p[:, 0], p[:, 1], p[:, 2]), feats)
    grid = grid.permute(0, 4, 1, 2, 3)
    q = out_coords[:, 1:].long() - lo
    if transposed:
        y = F.conv_transpose3d(grid, w.permute(3, 4, 0, 1, 2), dilation=dilation)
    else:
        y = F.conv3d(grid, w.permute(4, 3, 0, 1, 2), dilation=dilation)
        if centred:
            q = q - torch.tensor([(k - 1) // 2 * d for k, d in zip(kernel_size, dilation)])
    return y[out_coords[:, 0].long(), :, q[:, 0], q[:, 1], q[:, 2]]


def all_offsets(kernel_size, centred):
    ranges = [range(-((k - 1) // 2), k // 2 + 1) if centred else range(k) for k in kernel_size]
    return list(itertools.product(*ranges))
