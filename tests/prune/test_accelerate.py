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


def _dense_pack(weight):
    """Dense ``W[k]^T`` operands: the sparse path's data flow without sparse tensor cores."""
    return [wk.t().contiguous() for wk in weight]


@pytest.mark.parametrize("stride", [1, 2])
def test_packed_data_path_matches_the_dense_conv(stride):
    """With dense ``W[k]^T`` as the packed operand, the sparse path's gather/linear/scatter and
    identity-offset handling must reproduce the reference dataflow exactly."""
    x, _ = scene(1200)
    w = _two_four((27 if stride == 1 else 8, 4, 6))
    k = 3 if stride == 1 else 2
    ref = sc.functional.conv3d(x, w, kernel_size=k, stride=stride, dataflow="torch")
    got = sc.functional.semi_structured_conv3d(x, w, _dense_pack(w), kernel_size=k, stride=stride)
    torch.testing.assert_close(got.feats, ref.feats)
    assert torch.equal(got.coords, ref.coords)
    with pytest.raises(ValueError, match="packed has 3 offsets"):
        sc.functional.semi_structured_conv3d(x, w, _dense_pack(w)[:3], kernel_size=k, stride=stride)


def test_semi_structured_layer_infers_sparse_trains_dense_and_repacks():
    x, _ = scene(800)
    conv = sc.nn.Conv3d(4, 4, 3)
    packs = []

    def wrong_pack(weight):  # a deliberately wrong operand shows which path ran
        packs.append(weight.clone())
        return [torch.zeros(4, 4)] * 27

    layer = sc.nn.SemiStructuredConv3d.from_conv(conv, pack=wrong_pack)
    assert layer.weight is conv.weight
    assert list(layer.state_dict()) == list(conv.state_dict())
    layer.eval()
    with torch.no_grad():
        assert layer(x).feats.abs().max() == 0  # inference: the packed operand
        layer(x)
    assert len(packs) == 1  # packed once while the weight is unchanged
    assert layer(x).feats.abs().max() > 0  # autograd needs the real weight
    layer.train()
    with torch.no_grad():
        assert layer(x).feats.abs().max() > 0  # training mode: the dense conv
        layer.weight.add_(1.0)  # an optimiser step
    layer.eval()
    with torch.no_grad():
        layer(x)
    assert len(packs) == 2 and torch.equal(packs[1], layer.weight)
    plain = layer.to_conv()
    assert type(plain) is sc.nn.Conv3d and plain.weight is layer.weight
    assert not hasattr(plain, "pack")


def test_masked_layer_survives_the_swap_without_repacking_each_call():
    x, _ = scene(800)
    net = sc.nn.Sequential(sc.nn.Conv3d(8, 8, 3))
    x = sc.SparseTensor(torch.randn(len(x.feats), 8), x.coords)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.prune.nm_prune(net, n=2, m=4)
    packs = []
    layer = sc.nn.SemiStructuredConv3d.from_conv(
        net[0], pack=lambda w: packs.append(1) or _dense_pack(w)
    )
    assert hasattr(layer, "weight_mask")  # the mask buffer and its hook came along
    layer.eval()
    with torch.no_grad():
        ref = sc.functional.conv3d(x, layer.weight, dataflow="torch")
        for _ in range(3):
            torch.testing.assert_close(layer(x).feats, ref.feats)
    assert len(packs) == 1  # the mask hook's in-place multiply bumps the version, not the values


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
    got = sc.functional.semi_structured_conv3d(x, w, semi_structured.pack(w))
    err = (got.feats.float() - ref.feats.float()).abs().max() / ref.feats.float().abs().max()
    assert err < 1e-2
    net = sc.nn.Sequential(sc.nn.Conv3d(64, 64, 3), sc.nn.Conv3d(64, 64, 3)).half().cuda()
    for m in net:
        m.weight.data = _two_four((27, 64, 64), seed=1).half().cuda()
    report = sc.prune.accelerate_nm(net, x, rounds=5)
    print(report)
    for p in report.layers.values():
        assert p.dense_ms is not None and p.sparse_ms is not None, p.reason
