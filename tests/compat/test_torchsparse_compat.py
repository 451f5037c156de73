"""``sparseconv.compat.torchsparse`` against TorchSparse's documented conventions (coordinate
order, kernel layout and offset order, state_dict keys) and against the native MinkUNet."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import sparseconv as sc
import sparseconv.compat.torchsparse as torchsparse
import sparseconv.compat.torchsparse.nn as spnn
from sparseconv.compat.torchsparse.utils.collate import sparse_collate, sparse_collate_fn
from sparseconv.compat.torchsparse.utils.quantize import sparse_quantize
from sparseconv.nn.convert import to_minkowski

sys.path.insert(0, str(Path(__file__).parent))
from torchsparse_nets import MinkUNet  # noqa: E402


def _one_hot_cube():
    """The 27 voxels around the origin; feature 1 at the origin, 0 elsewhere."""
    r = torch.arange(-1, 2)
    xyz = torch.cartesian_prod(r, r, r)
    coords = torch.cat([torch.zeros(27, 1, dtype=torch.long), xyz], 1).int()
    feats = (xyz.abs().sum(1) == 0).float()[:, None]
    return coords, feats


def test_odd_kernel_offsets_run_x_fastest():
    """TorchSparse's get_kernel_offsets: for an odd volume, offsets [x, y, z] for z, for y, for x.
    A submanifold output at o reads o + delta: the impulse at 0 lands on o = -delta."""
    coords, feats = _one_hot_cube()
    conv = spnn.Conv3d(1, 1, 3)
    with torch.no_grad():
        conv.kernel.copy_(torch.arange(27.0).reshape(27, 1, 1))
    y = conv(torchsparse.SparseTensor(feats, coords))
    for (_, x, yy, z), value in zip(y.C.tolist(), y.F[:, 0].tolist()):
        dx, dy, dz = -x, -yy, -z
        assert value == (dx + 1) + 3 * (dy + 1) + 9 * (dz + 1)


def test_even_kernel_offsets_are_x_major_and_strided_cells_floor():
    """k = s = 2: offsets [x, y, z] for x, for y, for z over 0..1; output o (a multiple of 2)
    reads o + delta."""
    cell = torch.cartesian_prod(torch.arange(2), torch.arange(2), torch.arange(2))
    coords = torch.cat([torch.zeros(8, 1, dtype=torch.long), cell + 2], 1).int()
    feats = 10.0 ** torch.arange(8.0, dtype=torch.float64)[:, None]
    conv = spnn.Conv3d(1, 1, 2, stride=2).double()
    with torch.no_grad():
        conv.kernel.copy_(torch.arange(8.0, dtype=torch.float64).reshape(8, 1, 1))
    y = conv(torchsparse.SparseTensor(feats, coords))
    assert y.C.tolist() == [[0, 2, 2, 2]] and y.s == (2, 2, 2)
    expected = sum(10.0**i * (4 * dx + 2 * dy + dz) for i, (dx, dy, dz) in enumerate(cell.tolist()))
    assert y.F.item() == expected


def test_state_dict_layout():
    conv = spnn.Conv3d(4, 8, 3, bias=True)
    point = spnn.Conv3d(4, 8, 1)
    assert dict(conv.state_dict().items()).keys() == {"kernel", "bias"}
    assert conv.kernel.shape == (27, 4, 8) and point.kernel.shape == (4, 8)
    assert point.state_dict().keys() == {"kernel"}  # TorchSparse's default: no bias
    net = MinkUNet(torchsparse, spnn, cr=0.25)
    keys = list(net.state_dict())
    assert keys[0] == "stem.0.kernel" and "stage1.0.0.kernel" in keys
    assert "stage1.1.net.0.kernel" in keys and "stage2.1.downsample.0.kernel" in keys
    assert "up1.0.0.kernel" in keys and keys[-1] == "classifier.0.bias"


def _native_twin(net: MinkUNet, width: float) -> sc.models.MinkUNet:
    """The native MinkUNet with the compat network's weights (module order is the same)."""
    native = sc.models.MinkUNet(4, 19, width=width)
    ours = [m for m in net.modules() if isinstance(m, (spnn.Conv3d, nn.BatchNorm1d, nn.Linear))]
    parts = [native.stem, native.down]
    for j in range(4):  # TorchSparse's up{j} holds the transposed block and its fuse stage
        parts += [native.up[j], native.fuse[j]]
    theirs = [m for part in [*parts, native.classifier] for m in part.modules()
              if isinstance(m, (sc.nn.Conv3d, nn.BatchNorm1d, nn.Linear))]  # fmt: skip
    assert len(ours) == len(theirs)
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            if isinstance(a, spnn.Conv3d):
                assert a.kernel_size == b.kernel_size and a.transposed == b.transposed
                b.weight.copy_(a.native_weight())
                assert torch.equal(to_minkowski(b.weight, b.kernel_size).reshape(a.kernel.shape),
                                   a.kernel)  # fmt: skip
            else:
                b.load_state_dict(a.state_dict())
    return native


def test_minkunet_written_for_torchsparse_equals_the_native_one():
    torch.manual_seed(0)
    net = MinkUNet(torchsparse, spnn, cr=0.25)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    native = _native_twin(net, 0.25)
    net.eval(), native.eval()
    points = torch.randn(3000, 3) * 4
    feats = torch.randn(3000, 4)
    coords, index = sparse_quantize(points.numpy(), 0.2, return_index=True)
    x = sparse_collate([torchsparse.SparseTensor(feats[index], coords)])
    with torch.no_grad():
        got = net(x)
        want = native(sc.SparseTensor(x.F, x.C))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    net.train(), native.train()
    got = net(x)
    got.square().mean().backward()
    want = native(sc.SparseTensor(x.F, x.C))
    want.square().mean().backward()
    torch.testing.assert_close(to_minkowski(native.stem[0][0].weight.grad, 3),
                               net.stem[0].kernel.grad, rtol=1e-4, atol=1e-6)  # fmt: skip


def test_torchsparse_checkpoint_loads_and_round_trips(tmp_path):
    net = MinkUNet(torchsparse, spnn, cr=0.25)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict()}, path)
    other = MinkUNet(torchsparse, spnn, cr=0.25)
    other.load_state_dict(torch.load(path)["model"])
    for (k, a), b in zip(net.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    bad = dict(net.state_dict())
    bad["stem.0.kernel"] = bad["stem.0.kernel"][:, :, :4]
    with pytest.raises(RuntimeError, match="size mismatch for stem.0.kernel"):
        other.load_state_dict(bad)


def test_sparse_quantize_matches_its_definition():
    pts = np.array([[0.05, 0.15, 0.25], [0.07, 0.12, 0.28], [-0.15, 0.0, 0.0], [1.05, 1.05, 1.05]])
    coords, index, inverse = sparse_quantize(pts, 0.1, return_index=True, return_inverse=True)
    # floor(p / 0.1) per axis; voxels in lexicographic order; first point of each; point->voxel
    assert coords.tolist() == [[-2, 0, 0], [0, 1, 2], [10, 10, 10]] and coords.dtype == np.int32
    assert index.tolist() == [2, 0, 3]
    assert inverse.tolist() == [1, 1, 0, 2]
    assert (coords[inverse] == np.floor(pts / 0.1)).all()
    assert sparse_quantize(pts, (0.1, 0.1, 1.0)).shape == (3, 3)
    with pytest.raises(ValueError, match="voxel_size must be a positive"):
        sparse_quantize(pts, 0)
    with pytest.raises(ValueError, match=r"coords must have shape \[N, 3\]"):
        sparse_quantize(pts[:, :2], 0.1)


def test_collate_puts_the_batch_index_first():
    a = torchsparse.SparseTensor(torch.ones(2, 1), torch.tensor([[0, 0, 0], [1, 0, 0]]))
    b = torchsparse.SparseTensor(torch.zeros(1, 1), torch.tensor([[5, 5, 5]]))
    assert a.C.shape == (2, 3)
    batch = sparse_collate_fn([{"x": a, "y": np.ones(2), "name": "a"},
                               {"x": b, "y": np.zeros(2), "name": "b"}])  # fmt: skip
    assert batch["x"].C.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [1, 5, 5, 5]]
    assert batch["y"].shape == (2, 2) and batch["name"] == ["a", "b"]
    with pytest.raises(ValueError, match="already has a batch column"):
        sparse_collate([batch["x"]])


def test_bad_input():
    with pytest.raises(ValueError, match="generative=True"):
        spnn.Conv3d(2, 2, 3, stride=2, generative=True)
    with pytest.raises(ValueError, match="does not support: padding"):
        spnn.Conv3d(2, 2, 3, padding=1)
    with pytest.raises(TypeError, match="quantize them first"):
        torchsparse.SparseTensor(torch.ones(1, 1), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"coords must be an int \[N, 4\]"):
        torchsparse.SparseTensor(torch.ones(1, 1), torch.zeros(1, 5, dtype=torch.int32))
    x = torchsparse.SparseTensor(torch.ones(2, 1), torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]]))
    with pytest.raises(ValueError, match="same coordinates"):
        torchsparse.cat([x, torchsparse.SparseTensor(torch.ones(1, 1), torch.zeros(1, 4).int())])


def test_strided_k3_offsets_are_centred_and_transposed_returns():
    """TorchSparse centres the offsets of strided convs too: an output cell o reads o - 1..o + 1."""
    coords = torch.tensor([[0, 1, 0, 0], [0, -1, 0, 0], [0, 4, 4, 4]], dtype=torch.int32)
    x = torchsparse.SparseTensor(torch.ones(3, 1, dtype=torch.float64), coords)
    down = spnn.Conv3d(1, 1, 3, stride=2).double()
    with torch.no_grad():
        down.kernel.copy_(torch.arange(27.0, dtype=torch.float64).reshape(27, 1, 1))
    y = down(x)
    got = dict(zip(map(tuple, y.C.tolist()), y.F[:, 0].tolist()))
    # cell 0 reads (1,0,0) at delta (+1,0,0) (index 2 + 3 + 9 = 14) and (-1,0,0) at delta
    # (-1,0,0) (index 12); cell -2 reads (-1,0,0) at delta +1 (14); (4,4,4) is cell 4's centre
    assert got == {(0, -2, 0, 0): 14.0, (0, 0, 0, 0): 26.0, (0, 4, 4, 4): 13.0}
    up = spnn.Conv3d(1, 2, 3, stride=2, transposed=True).double()
    z = up(y)
    assert torch.equal(z.C, x.C) and z.s == (1, 1, 1)
