"""Sparse convs under torch.autocast run in the autocast dtype, as torch.mm does."""

import pytest
import torch
from reference import random_coords

import sparseconv as sc
from sparseconv.functional import conv3d
from sparseconv.kernels import cpu_implicit_gemm as kernels


def _input(n=400, c=8, seed=0):
    coords = random_coords(n, extent=10, seed=seed)
    g = torch.Generator().manual_seed(seed)
    return sc.SparseTensor(torch.randn(len(coords), c, generator=g), coords)


def test_a_conv_under_cpu_autocast_is_the_bf16_conv_and_trains_the_float32_weight():
    x = _input()
    w = (torch.randn(27, 8, 6) * 0.2).requires_grad_(True)
    b = torch.randn(6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv3d(x, w, b)
    assert y.feats.dtype == torch.bfloat16
    want = conv3d(x.replace_feats(x.feats.bfloat16()), w.detach().bfloat16(), b.detach().bfloat16())
    torch.testing.assert_close(y.feats, want.feats)
    y.feats.float().square().sum().backward()
    assert w.grad.dtype == torch.float32 and w.grad.abs().sum() > 0
    assert b.grad.dtype == torch.float32


def test_float64_is_left_alone_and_autocast_off_changes_nothing():
    x = _input()
    x64 = x.replace_feats(x.feats.double())
    w64 = torch.randn(27, 8, 4, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv3d(x64, w64).feats.dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert conv3d(x, w64.float()).feats.dtype == torch.float32


@pytest.mark.parametrize("model_cls", [sc.models.MinkUNet, sc.models.SPVCNN])
def test_whole_networks_run_under_autocast_close_to_float32(model_cls):
    """SPVCNN's point MLPs (nn.Linear) autocast too: every conv must take their bf16 output."""
    torch.manual_seed(0)
    net = model_cls(4, 5, width=0.25).eval()
    pts = torch.rand(3000, 3) * 4
    x, _ = sc.voxelize(pts, 0.1)
    x = sc.SparseTensor(torch.randn(len(x), 4), x.coords)
    args = (x,) if model_cls is sc.models.MinkUNet else (x, torch.cat([torch.zeros(len(x), 1),
            (x.coords[:, 1:].float() + 0.5) * 0.1], 1), 0.1)  # fmt: skip
    with torch.no_grad():
        full = net(*args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = net(*args)
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).norm() / full.norm() < 5e-2


@pytest.mark.skipif(not kernels.amx_available(), reason="no usable AMX-BF16 on this CPU")
def test_autocast_convs_run_on_amx(monkeypatch):
    calls = []
    amx = kernels.implicit_gemm_bf16
    monkeypatch.setattr(
        kernels, "implicit_gemm_bf16", lambda *a, **k: calls.append(1) or amx(*a, **k)
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        conv3d(_input(), torch.randn(27, 8, 16), dataflow="cpu_implicit_gemm")
    assert calls
