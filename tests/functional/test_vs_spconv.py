"""Against spconv's CPU build on the real SemanticKITTI scan, with converted weights.

spconv's CPU scatter-add races with more than one torch thread, so every comparison runs it
single-threaded (see docs/conventions.md).
"""

import pytest
import torch
from reference import needs_cpu_kernels

import sparseconv as sc
from sparseconv.maps import keys as coord_keys
from sparseconv.nn.convert import from_spconv

spconv = pytest.importorskip("spconv.pytorch")
# CPU tensors need spconv's native (gather-GEMM-scatter) algorithm: a CUDA wheel of spconv
# defaults to implicit GEMM, which it only runs on CUDA
NATIVE = dict(algo=spconv.ConvAlgo.Native)


@pytest.fixture
def scan(real_scan_points):
    x, _ = sc.voxelize(real_scan_points[:, :3], 0.05)
    coords = x.coords.clone()
    coords[:, 1:] -= coords[:, 1:].amin(0) - 2  # spconv needs non-negative indices
    return coords


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _spconv_tensor(feats, coords):
    shape = (coords[:, 1:].amax(0) + 8).tolist()
    return spconv.SparseConvTensor(feats, coords, shape, 1)


def _align(ours_coords, ours_feats, their_coords, their_feats, scale):
    """Rows of both outputs ordered by coordinate (spconv's are in coarse-grid units)."""
    tc = their_coords.clone()
    tc[:, 1:] *= scale
    ko, kt = coord_keys.pack(ours_coords), coord_keys.pack(tc.int())
    assert torch.equal(torch.sort(ko).values, torch.sort(kt).values), "output coordinates differ"
    return ours_feats[torch.argsort(ko)], their_feats[torch.argsort(kt)]


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# the two CPU dataflows (cpu_implicit_gemm needs a C compiler: skipped without one)
FLOWS = ["torch", pytest.param("cpu_implicit_gemm", marks=needs_cpu_kernels)]


@pytest.mark.parametrize("dataflow", FLOWS)
def test_submanifold_matches_spconv(scan, one_thread, dataflow):
    torch.manual_seed(0)
    feats = torch.randn(len(scan), 8)
    conv = spconv.SubMConv3d(8, 16, 3, bias=False, indice_key="subm", **NATIVE)
    ref = conv(_spconv_tensor(feats, scan))
    ours = sc.functional.conv3d(
        sc.SparseTensor(feats, scan), from_spconv(conv.weight.detach()), dataflow=dataflow
    )
    assert torch.equal(ref.indices, scan)
    assert _rel_err(ours.feats, ref.features.detach()) <= 1e-4


@pytest.mark.parametrize("dataflow", FLOWS)
@pytest.mark.parametrize("k", [2, 3])
def test_strided_and_inverse_match_spconv(scan, one_thread, k, dataflow):
    torch.manual_seed(1)
    feats = torch.randn(len(scan), 8)
    down = spconv.SparseConv3d(8, 16, k, stride=2, bias=False, indice_key="down", **NATIVE)
    up = spconv.SparseInverseConv3d(16, 8, k, bias=False, indice_key="down", **NATIVE)
    ref_down = down(_spconv_tensor(feats, scan))
    ref_up = up(ref_down)
    x = sc.SparseTensor(feats, scan)
    y = sc.functional.conv3d(
        x,
        from_spconv(down.weight.detach()),
        kernel_size=k,
        stride=2,
        downsample_mode="spconv",
        dataflow=dataflow,
    )
    a, b = _align(y.coords, y.feats, ref_down.indices, ref_down.features.detach(), 2)
    assert _rel_err(a, b) <= 1e-4
    z = sc.functional.conv3d(
        y,
        from_spconv(up.weight.detach()),
        kernel_size=k,
        stride=2,
        transposed=True,
        downsample_mode="spconv",
        dataflow=dataflow,
    )
    assert z.coords is x.coords
    assert torch.equal(ref_up.indices, scan)
    assert _rel_err(z.feats, ref_up.features.detach()) <= 1e-4
