import pytest
import torch
from reference import random_coords

import sparseconv as sc
from sparseconv import nn as snn


def _tensor(n=150, c=4, seed=0):
    coords = random_coords(n, extent=10, seed=seed)
    return sc.SparseTensor(torch.randn(len(coords), c), coords)


def test_unet_pattern_runs_and_reuses_maps():
    x = _tensor()
    net = snn.Sequential(snn.Conv3d(4, 8), snn.BatchNorm(8), snn.ReLU(), snn.Conv3d(8, 8))
    down = snn.Conv3d(8, 16, 2, stride=2)
    up = snn.Conv3d(16, 8, 2, stride=2, transposed=True)
    y = net(x)
    z = up(down(y))
    assert z.coords is x.coords and z.feats.shape == (len(x), 8)
    # one submanifold map shared by both convs, the strided map, and its transpose (derived)
    assert len(x.cache.kmaps) == 3
    z.feats.sum().backward()
    assert net[0].weight.grad is not None


def test_module_conventions_state_dict_half_to():
    conv = snn.Conv3d(4, 6, 3, bias=True)
    sd = conv.state_dict()
    assert sd["weight"].shape == (27, 4, 6) and sd["bias"].shape == (6,)
    other = snn.Conv3d(4, 6, 3, bias=True)
    other.load_state_dict(sd)
    x = _tensor()
    torch.testing.assert_close(conv(x).feats, other(x).feats)
    y = conv.double()(x.to(torch.float64))
    assert y.feats.dtype == torch.float64


def test_norms_activations_and_dropout():
    x = _tensor(c=8)
    gn = snn.GroupNorm(2, 8)
    torch.nn.init.normal_(gn.weight)
    torch.nn.init.normal_(gn.bias)
    out = gn(x)
    for b in (0, 1):  # each scan normalised on its own, exactly as torch's GroupNorm would
        rows = x.coords[:, 0] == b
        ref = torch.nn.functional.group_norm(
            x.feats[rows].t()[None], 2, gn.weight, gn.bias, gn.eps
        )[0].t()
        torch.testing.assert_close(out.feats[rows], ref)
    torch.testing.assert_close(snn.ReLU()(x).feats, x.feats.clamp(min=0))
    bn = snn.BatchNorm(8)
    ref_bn = torch.nn.BatchNorm1d(8)
    for mode in ("train", "eval"):  # batch statistics, then the running ones
        getattr(bn, mode)()
        getattr(ref_bn, mode)()
        torch.testing.assert_close(bn(x).feats, ref_bn(x.feats))
    torch.testing.assert_close(bn.running_var, ref_bn.running_var)
    assert torch.equal(snn.Dropout(0.5).eval()(x).feats, x.feats)
    lr = snn.LeakyReLU(0.1)(x).feats
    torch.testing.assert_close(lr, torch.nn.functional.leaky_relu(x.feats, 0.1))


def test_pooling():
    x = _tensor(c=3)
    g = snn.GlobalMaxPool()(x)
    for b in range(x.batch_size):
        torch.testing.assert_close(g[b], x.feats[x.coords[:, 0] == b].amax(0))
    a = snn.GlobalAvgPool()(x)
    torch.testing.assert_close(a[0], x.feats[x.coords[:, 0] == 0].mean(0))
    for b in range(x.batch_size):
        torch.testing.assert_close(a[b], x.feats[x.coords[:, 0] == b].mean(0))
    mp = snn.MaxPool3d(2, 2)(x)
    ap = snn.AvgPool3d(2, 2)(x)
    assert mp.stride == (2, 2, 2)
    cell = torch.div(x.coords[:, 1:], 2, rounding_mode="floor") * 2
    for j in range(len(mp)):  # every output cell: the max / mean of the inputs inside it
        sel = (x.coords[:, 0] == mp.coords[j, 0]) & (cell == mp.coords[j, 1:]).all(1)
        torch.testing.assert_close(mp.feats[j], x.feats[sel].amax(0))
        torch.testing.assert_close(ap.feats[j], x.feats[sel].mean(0))


def test_half_precision_layers():
    x = _tensor(c=8)
    net = snn.Sequential(snn.Conv3d(8, 8, 3), snn.BatchNorm(8), snn.ReLU(), snn.Conv3d(8, 4, 3))
    net.eval()
    ref = net(x).feats
    for dtype, tol in ((torch.float16, 5e-3), (torch.bfloat16, 3e-2)):
        low = net.to(dtype)(x.to(dtype)).feats
        assert low.dtype == dtype
        assert ((low.float() - ref).norm() / ref.norm()) < tol
        net.float()
    half = snn.Conv3d(8, 4, 3).half()  # .half() as a user writes it
    assert half.weight.dtype == torch.float16 and half(x.half()).feats.dtype == torch.float16


def test_weight_converters_round_trip():
    from sparseconv.nn import convert

    w = torch.randn(27, 4, 5)
    assert torch.equal(convert.from_spconv(convert.to_spconv(w, 3)), w)
    assert torch.equal(convert.from_minkowski(convert.to_minkowski(w, 3), 3), w)
    sp = convert.to_spconv(w, 3)
    assert sp.shape == (5, 3, 3, 3, 4)
    # offset (dx, dy, dz) = (-1, 0, 1) is our index 0*9 + 1*3 + 2 = 5; MinkowskiEngine's 2*9+1*3+0
    me = convert.to_minkowski(w, 3)
    assert torch.equal(me[21], w[5])
    with pytest.raises(ValueError, match="kernel_size"):
        convert.to_spconv(w, 2)


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="in_channels"):
        snn.Conv3d(0, 4)
    with pytest.raises(TypeError, match="kernel_size"):
        snn.Conv3d(4, 4, kernel_size=(3, 3))
