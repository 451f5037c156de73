"""2:4 semi-structured sparse GEMM path: the data path on CPU, the real kernels on a GPU."""

import warnings

import pytest
import torch
from prune_helpers import SkipNet, randomise_norms, scene

import sparseconv as sc
from sparseconv.functional import semi_structured


def _two_four(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    keep = torch.rand(shape, generator=g).movedim(1, -1)
    keep = keep.reshape(*keep.shape[:-1], -1, 4).argsort(-1).argsort(-1) < 2
    return w * keep.reshape(*keep.shape[:-2], -1).movedim(-1, 1)


def test_is_2_4_known_answers():
    w = _two_four((27, 8, 5))
    assert semi_structured.is_2_4(w)
    w[0, 0:4, 0] = 1.0  # four non-zeros in one group
    assert not semi_structured.is_2_4(w)
    assert not semi_structured.is_2_4(torch.zeros(27, 6, 4))  # Cin not a multiple of 4
    assert semi_structured.is_2_4(torch.zeros(27, 8, 4))


@pytest.mark.parametrize("stride", [1, 2])
def test_packed_data_path_matches_the_dense_conv(stride):
    """With dense ``W[k]^T`` as the packed operand, the sparse path's gather/linear/scatter and
    identity-offset handling must reproduce the reference dataflow exactly."""
    x, _ = scene(1200)
    w = _two_four((27 if stride == 1 else 8, 4, 6))
    k = 3 if stride == 1 else 2
    ref = sc.functional.conv3d(x, w, kernel_size=k, stride=stride, dataflow="torch")
    packed = [wk.t().contiguous() for wk in w]
    with torch.no_grad():
        got = sc.functional.conv3d(x, w, kernel_size=k, stride=stride, packed_weight=packed)
    torch.testing.assert_close(got.feats, ref.feats)
    assert torch.equal(got.coords, ref.coords)


def test_packed_weight_only_used_without_gradients():
    x, _ = scene(800)
    layer = sc.nn.Conv3d(4, 4, 3)
    layer.eval()
    layer.packed_weight = [torch.zeros(4, 4)] * 27  # a deliberately wrong snapshot
    with torch.no_grad():
        assert layer(x).feats.abs().max() == 0  # inference uses the snapshot
    assert layer(x).feats.abs().max() > 0  # autograd needs the real weight
    layer.train()
    assert layer.packed_weight is None  # training invalidates the snapshot


def test_accelerate_on_cpu_reports_why_every_layer_stays_dense():
    x, _ = scene(1500)
    net = randomise_norms(SkipNet(c_in=4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.prune.nm_prune(net, n=2, m=4)
    before = net(x)
    net.train()
    report = sc.prune.accelerate_nm(net, x)
    assert not net.training and report.accelerated == []
    assert list(report.layers) == ["stem.0", "res.0", "down.0", "up", "mix.0"]
    assert all("needs a CUDA GPU" in p.reason for p in report.layers.values())
    assert "0 of 5 conv layers" in str(report)
    torch.testing.assert_close(net(x), before)
    with pytest.raises(ValueError, match="rounds"):
        sc.prune.accelerate_nm(net, x, rounds=0)


def test_pack_refuses_with_the_reason():
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        semi_structured.pack(_two_four((27, 8, 8)))


def _ampere():
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


@pytest.mark.gpu
@pytest.mark.skipif(not _ampere(), reason="needs a CUDA GPU with compute capability >= 8.0")
def test_semi_structured_kernels_match_dense_on_gpu():
    x, _ = scene(20000)
    x = sc.SparseTensor(torch.randn(len(x.feats), 64), x.coords).to("cuda")
    x = x.replace_feats(x.feats.half())
    w = _two_four((27, 64, 64)).half().cuda()
    ref = sc.functional.conv3d(x, w, dataflow="torch")
    with torch.no_grad():
        got = sc.functional.conv3d(x, w, packed_weight=semi_structured.pack(w))
    err = (got.feats.float() - ref.feats.float()).abs().max() / ref.feats.float().abs().max()
    assert err < 1e-2
    net = sc.nn.Sequential(sc.nn.Conv3d(64, 64, 3), sc.nn.Conv3d(64, 64, 3)).half().cuda()
    for m in net:
        m.weight.data = _two_four((27, 64, 64), seed=1).half().cuda()
    report = sc.prune.accelerate_nm(net, x, rounds=5)
    print(report)
    for p in report.layers.values():
        assert p.dense_ms is not None and p.sparse_ms is not None, p.reason
