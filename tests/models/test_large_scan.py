"""Scale: a 2 M-voxel synthetic scan through MinkUNet width 1.0, maps built per call (slow)."""

import resource

import pytest
import torch

import sparseconv as sc
from sparseconv.bench import inputs
from sparseconv.models import MinkUNet


@pytest.mark.slow
def test_two_million_voxels_through_minkunet_width_1():
    coords = inputs.synthetic_coords(2_000_000)
    assert len(coords) == 2_000_000
    net = MinkUNet(4, 19, width=1.0).eval()
    x = sc.SparseTensor(torch.randn(len(coords), 4), coords)
    with torch.no_grad():
        logits = net(x)
    assert logits.shape == (2_000_000, 19) and bool(torch.isfinite(logits).all())
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory {peak_gib:.1f} GiB")  # recorded in docs/benchmarks.md
    assert peak_gib < 20


@pytest.mark.slow
def test_three_million_voxels_round_trip_voxelize_conv_devoxelize():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(3_300_000, 3, generator=g) * torch.tensor([300.0, 300.0, 4.0])
    x, p2v = sc.voxelize(pts, 0.05)
    assert len(x) > 3_000_000
    y = sc.nn.Conv3d(3, 8, 3)(x)
    back = sc.devoxelize(y, p2v)
    assert back.shape == (len(pts), 8) and bool(torch.isfinite(back).all())
    torch.testing.assert_close(back[:100], y.feats[p2v[:100]])
