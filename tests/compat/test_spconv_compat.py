"""``sparseconv.compat.spconv`` against spconv 2.3.8 itself (single-threaded, its only correct CPU
setting): the same code, the same ``state_dict``, on real scans and on every layer type."""

import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import sparseconv as sc
import sparseconv.compat.spconv as ours
from sparseconv.nn.convert import from_spconv

sys.path.insert(0, str(Path(__file__).parent))
from spconv_nets import (  # noqa: E402
    SpUNet,
    VoxelBackBone8x,
    kitti_voxels,
    randomise_norms,
    scan_voxels,
)

real = pytest.importorskip("spconv.pytorch")
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _scan(path: Path, width: int) -> torch.Tensor:
    if not path.exists():
        pytest.skip(f"real scans not found at {DATA} (see shared/data/README.md)")
    return torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, width))


def _twins(build, seed=0):
    torch.manual_seed(seed)
    mine = build(ours)
    randomise_norms(mine, seed)
    theirs = build(real)
    theirs.load_state_dict(mine.state_dict())  # spconv's own loader takes our state_dict as is
    return mine.eval(), theirs.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def test_voxel_backbone_8x_on_a_real_kitti_scan_matches_spconv():
    feats, idx, shape = kitti_voxels(_scan(DATA / "kitti/velodyne/004139.bin", 4))
    mine, theirs = _twins(VoxelBackBone8x)
    with torch.no_grad():
        got = mine(ours.SparseConvTensor(feats, idx, shape, 1))
        want = theirs(real.SparseConvTensor(feats, idx, shape, 1))
    assert got.shape == want.shape == (1, 128, 2, 200, 176)
    assert (want != 0).any(dim=1).sum() > 1000  # a real map, not an empty grid
    print(f"VoxelBackBone8x on {len(feats)} voxels: max relative error {_rel(got, want):.2g}")
    assert _rel(got, want) <= 1e-4


def test_sp_unet_on_a_real_semantickitti_scan_matches_spconv():
    path = DATA / "semantickitti/sequences/08/velodyne/000000.bin"
    feats, idx, shape = scan_voxels(_scan(path, 4))
    mine, theirs = _twins(SpUNet, seed=1)
    with torch.no_grad():
        got = mine(ours.SparseConvTensor(feats, idx, shape, 1))
        want = theirs(real.SparseConvTensor(feats, idx, shape, 1))
    assert got.shape == want.shape == (len(feats), 5)
    print(f"SpUNet on {len(feats)} voxels: max relative error {_rel(got, want):.2g}")
    assert _rel(got, want) <= 1e-4


def _random_tensor(lib, n=300, shape=(12, 11, 10), c=3, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(batch * int(np.prod(shape)), generator=g)[:n]
    b, rest = cells // int(np.prod(shape)), cells % int(np.prod(shape))
    xyz = torch.stack(torch.unravel_index(rest, shape), 1)
    idx = torch.cat([b[:, None], xyz], 1).int()
    feats = torch.randn(n, c, generator=g)
    return lib.SparseConvTensor(feats, idx, list(shape), batch)


def _layers(lib, kind: str):
    if kind == "subm3":
        return lib.SparseSequential(lib.SubMConv3d(3, 4, 3, indice_key="a"))
    if kind == "subm1x1":
        return lib.SparseSequential(lib.SubMConv3d(3, 4, 1, bias=True))
    if kind == "subm5_dilated":
        return lib.SparseSequential(lib.SubMConv3d(3, 4, 5, dilation=2))
    if kind == "conv_k3s2p1":
        return lib.SparseSequential(lib.SparseConv3d(3, 4, 3, 2, 1, bias=True))
    if kind == "conv_k3s1p1":
        return lib.SparseSequential(lib.SparseConv3d(3, 4, 3, 1, 1))
    if kind == "conv_k3s2p011":
        return lib.SparseSequential(lib.SparseConv3d(3, 4, 3, 2, (0, 1, 1)))
    if kind == "conv_k311_s211":
        return lib.SparseSequential(lib.SparseConv3d(3, 4, (3, 1, 1), (2, 1, 1)))
    if kind == "conv_k2s2_dil":
        return lib.SparseSequential(lib.SparseConv3d(3, 4, 3, 2, 1, 2))
    if kind == "down_inverse":
        return lib.SparseSequential(
            lib.SparseConv3d(3, 4, 3, 2, 1, indice_key="d"),
            lib.SparseInverseConv3d(4, 2, 3, indice_key="d", bias=True),
        )
    if kind == "transpose":
        return lib.SparseSequential(lib.SparseConvTranspose3d(3, 4, 3, 2, 1))
    if kind == "maxpool_inverse":
        return lib.SparseSequential(
            lib.SparseMaxPool3d(3, 2, 1, indice_key="p"),
            lib.SparseInverseConv3d(3, 2, 3, indice_key="p"),
        )
    raise AssertionError(kind)


KINDS = ["subm3", "subm1x1", "subm5_dilated", "conv_k3s2p1", "conv_k3s1p1", "conv_k3s2p011",
         "conv_k311_s211", "conv_k2s2_dil", "down_inverse", "transpose", "maxpool_inverse"]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_each_layer_matches_spconv(kind):
    torch.manual_seed(0)
    mine = _layers(ours, kind)
    theirs = _layers(real, kind)
    theirs.load_state_dict(mine.state_dict())
    x_mine, x_theirs = _random_tensor(ours), _random_tensor(real)
    with torch.no_grad():
        a, b = mine(x_mine), theirs(x_theirs)
    assert a.spatial_shape == list(b.spatial_shape)
    torch.testing.assert_close(a.dense(), b.dense(), rtol=1e-5, atol=1e-5)
    assert len(a.indices) == len(b.indices)


def test_gradients_equal_the_native_layers():
    """compat SparseConv3d(k3, s2, p1) + SubMConv3d vs sparseconv's Conv3d with converted weights."""
    torch.manual_seed(0)
    x = _random_tensor(ours, c=3)
    net = ours.SparseSequential(ours.SparseConv3d(3, 4, 3, 2, 1, bias=True),
                                ours.SubMConv3d(4, 2, 3))  # fmt: skip
    down = sc.nn.Conv3d(3, 4, 3, stride=2, padding=1, spatial_shape=(12, 11, 10), bias=True,
                        downsample_mode="spconv")  # fmt: skip
    subm = sc.nn.Conv3d(4, 2, 3, bias=True)  # spconv's layers default to a bias
    with torch.no_grad():
        down.weight.copy_(from_spconv(net[0].weight))
        down.bias.copy_(net[0].bias)
        subm.weight.copy_(from_spconv(net[1].weight))
        subm.bias.copy_(net[1].bias)
    f1 = x.features.clone().requires_grad_(True)
    f2 = x.features.clone().requires_grad_(True)
    y1 = net(x.replace_feature(f1))
    y2 = subm(down(sc.SparseTensor(f2, x.indices)))
    g = torch.randn_like(y2.feats)
    assert torch.equal(y1._coords, y2.coords)
    torch.testing.assert_close(y1.features, y2.feats)
    (y1.features * g).sum().backward()
    (y2.feats * g).sum().backward()
    torch.testing.assert_close(f1.grad, f2.grad)
    torch.testing.assert_close(from_spconv(net[0].weight.grad), down.weight.grad)
    torch.testing.assert_close(net[0].bias.grad, down.bias.grad)
    torch.testing.assert_close(from_spconv(net[1].weight.grad), subm.weight.grad)
    torch.testing.assert_close(net[1].bias.grad, subm.bias.grad)


def test_tensor_api():
    x = _random_tensor(ours, n=50, shape=(4, 5, 6), c=2, batch=2)
    assert x.dense().shape == (2, 2, 4, 5, 6)
    assert x.dense(channels_first=False).shape == (2, 4, 5, 6, 2)
    assert float(x.dense().sum()) == pytest.approx(float(x.features.sum()), rel=1e-5)
    y = x.replace_feature(x.features * 2)
    assert y.indices is x.indices and y.indice_dict is x.indice_dict
    torch.testing.assert_close((x + y).features, x.features * 3)
    with pytest.raises(ValueError, match="replace_feature"):
        x.features = x.features
    with pytest.raises(ValueError, match="replace_feature got 3 rows for 50"):
        x.replace_feature(torch.ones(3, 2))
    down = ours.SparseConv3d(2, 3, 3, 2, 1, indice_key="k")(x)
    assert down.spatial_shape == [2, 3, 3] and "k" in x.indice_dict
    assert int(down.indices[:, 1:].max()) < 3 and down.find_indice_pair("k") is not None


def test_sequential_forms_and_state_dict_keys():
    seq = ours.SparseSequential(OrderedDict(conv=ours.SubMConv3d(2, 3, 3), bn=nn.BatchNorm1d(3)))
    kw = ours.SparseSequential(conv=ours.SubMConv3d(2, 3, 3), bn=nn.BatchNorm1d(3))
    ref = real.SparseSequential(conv=real.SubMConv3d(2, 3, 3), bn=nn.BatchNorm1d(3))
    assert list(seq.state_dict()) == list(kw.state_dict()) == list(ref.state_dict())
    for name, tensor in ref.state_dict().items():
        assert seq.state_dict()[name].shape == tensor.shape, name
    assert len(seq) == 2 and isinstance(seq[0], ours.SubMConv3d)


def test_a_state_dict_with_a_missing_or_misshapen_key_fails_clearly():
    net = ours.SparseSequential(ours.SparseConv3d(3, 4, 3, 2, 1))
    state = net.state_dict()
    with pytest.raises(RuntimeError, match=r"size mismatch for 0.weight"):
        net.load_state_dict({"0.weight": torch.zeros(4, 3, 3, 3, 4), "0.bias": state["0.bias"]})
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*0.bias"):
        net.load_state_dict({"0.weight": state["0.weight"]})


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: ours.SparseConv3d(4, 4, 3, groups=2), ValueError, "does not support: groups=2"),
        (lambda: ours.SubMConv3d(4, 4, 3, record_voxel_count=True), ValueError,
         "record_voxel_count"),
        (lambda: ours.SparseConv3d(4, 4, 3, bogus=1), TypeError, "unexpected argument.*bogus"),
        (lambda: ours.SubMConv3d(4, 4, 2), ValueError, "even kernel_size"),
        (lambda: ours.SubMConv3d(4, 4, 3, stride=2), ValueError, "must have stride 1"),
        (lambda: ours.SparseConv3d(4, 4, 1, padding=1), ValueError, "padding must be zero"),
        (lambda: ours.SparseConvolution(2, 4, 4), ValueError, "ndim=2"),
    ],
)  # fmt: skip
def test_unsupported_arguments_name_themselves(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_performance_arguments_are_accepted():
    conv = ours.SubMConv3d(2, 3, 3, algo=ours.ConvAlgo.Native, fp32_accum=True, name="a")
    assert conv.weight.shape == (3, 3, 3, 3, 2)


@pytest.mark.parametrize(
    ("indices", "shape", "match"),
    [
        ([[0, 4, 0, 0]], [4, 4, 4], r"indices\[:, 1\] must lie in \[0, 4\)"),
        ([[0, 0, -1, 0]], [4, 4, 4], r"indices\[:, 2\] must lie in"),
        ([[2, 0, 0, 0]], [4, 4, 4], r"batch indices must lie in \[0, 1\)"),
        ([[0, 0, 0, 0], [0, 0, 0, 0]], [4, 4, 4], "duplicate"),
        ([[0, 0, 0, 0]], [4, 0, 4], "spatial_shape must be 3 positive"),
    ],
)
def test_bad_tensors(indices, shape, match):
    idx = torch.tensor(indices, dtype=torch.int32)
    with pytest.raises(ValueError, match=match):
        ours.SparseConvTensor(torch.ones(len(idx), 1), idx, shape, 1)


def test_bad_tensor_types_and_layer_misuse():
    with pytest.raises(TypeError, match="int32"):
        ours.SparseConvTensor(torch.ones(1, 1), torch.zeros(1, 4, dtype=torch.int64), [2, 2, 2], 1)
    with pytest.raises(TypeError, match="unsupported argument.*nonsense"):
        ours.SparseConvTensor(torch.ones(1, 1), torch.zeros(1, 4, dtype=torch.int32), [2, 2, 2],
                              1, nonsense=True)  # fmt: skip
    x = _random_tensor(ours, n=20, shape=(4, 4, 4), c=3)
    with pytest.raises(ValueError, match="found no indice_key 'nope'"):
        ours.SparseInverseConv3d(3, 2, 3, indice_key="nope")(x)
    with pytest.raises(ValueError, match="expects 5 input channels, got 3"):
        ours.SubMConv3d(5, 2, 3)(x)
    ours.SubMConv3d(3, 3, 3, indice_key="s")(x)
    with pytest.raises(ValueError, match="same kernel size"):
        ours.SubMConv3d(3, 3, 5, indice_key="s")(x)
    with pytest.raises(ValueError, match="holds a SubMConv3d map"):
        ours.SparseInverseConv3d(3, 2, 3, indice_key="s")(x)
    with pytest.raises(TypeError, match="takes a SparseConvTensor"):
        ours.SubMConv3d(3, 3, 3)(x.features)
