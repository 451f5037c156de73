"""MinkUNet / SPVCNN: published parameter counts, shapes, and the decoder's coordinate contract."""

import pytest
import torch

import sparseconv as sc
from sparseconv.models import MINKUNET34_BLOCKS, SPVCNN, MinkUNet


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("cls, expected", [(MinkUNet, 21.7e6), (SPVCNN, 21.8e6)])
def test_parameter_counts_match_published(cls, expected):
    assert abs(n_params(cls(4, 19)) - expected) / expected < 0.01


def test_width_and_blocks():
    small = MinkUNet(4, 19, width=0.25)
    assert small.widths == [8, 8, 16, 32, 64, 64, 32, 24, 24]
    deep = MinkUNet(4, 19, blocks=MINKUNET34_BLOCKS)
    assert n_params(deep) > n_params(MinkUNet(4, 19))
    with pytest.raises(ValueError, match="blocks"):
        MinkUNet(4, 19, blocks=(2, 2))


def _scene(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, 3, generator=g) * torch.tensor([12.0, 12.0, 3.0])
    feats = torch.cat([pts, torch.rand(n, 1, generator=g)], 1)
    x, p2v = sc.voxelize(pts, 0.25, features=feats)
    return x, p2v, torch.cat([torch.zeros(n, 1), pts], 1)


def test_minkunet_voxel_logits_and_gradients():
    x, _, _ = _scene()
    net = MinkUNet(4, 5, width=0.25)
    y = net(x)
    assert y.shape == (len(x), 5)
    y.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_spvcnn_point_logits():
    x, p2v, points = _scene()
    net = SPVCNN(4, 5, width=0.25)
    y = net(x, points, 0.25)
    assert y.shape == (len(points), 5) and torch.isfinite(y).all()


def test_minkunet_batch_equals_single_scans():
    a, _, _ = _scene(seed=1)
    b, _, _ = _scene(seed=2)
    net = MinkUNet(4, 3, width=0.25).eval()
    both = net(sc.sparse_collate([a, b]))
    torch.testing.assert_close(both[: len(a)], net(a), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[len(a) :], net(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["minkunet", "spvcnn"])
def test_outputs_are_translation_equivariant_and_follow_the_point_order(model):
    """A value check beyond shapes: shifting the scan by a multiple of the deepest stride (16
    voxels) leaves every output unchanged, and permuting the points permutes the outputs."""
    g = torch.Generator().manual_seed(0)
    vs = 0.25
    pts = torch.randint(0, 512, (3000, 3), generator=g).float() / 64  # exact in float32
    feats = torch.randn(3000, 4, generator=g)  # per point, independent of the position
    torch.manual_seed(0)
    net = (sc.models.SPVCNN if model == "spvcnn" else sc.models.MinkUNet)(4, 5, width=0.25)
    for m in net.modules():  # non-trivial norms so that every layer shapes the output
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()

    def run(points, point_feats):
        x, p2v = sc.voxelize(points, vs, features=point_feats)
        with torch.no_grad():
            if model == "minkunet":
                return sc.devoxelize(x.replace_feats(net(x)), p2v)
            return net(x, torch.cat([torch.zeros(len(points), 1), points], 1), vs)

    base = run(pts, feats)
    assert base.shape == (3000, 5) and bool(torch.isfinite(base).all())
    assert base.std(0).min() > 0  # not a constant output
    shift = torch.tensor([16 * vs * 3, -16 * vs * 2, 16 * vs])
    torch.testing.assert_close(run(pts + shift, feats), base, rtol=1e-4, atol=1e-5)
    perm = torch.randperm(3000, generator=g)
    torch.testing.assert_close(run(pts[perm], feats[perm]), base[perm], rtol=1e-4, atol=1e-5)
