"""Every conv variant against a dense reference: forward, dX and dW."""

import math

import pytest
import torch
from reference import CUDA, DEVICES, TRITON_DEVICE, dense_conv, needs_cpu_kernels, random_coords

import sparseconv as sc
from sparseconv.functional import conv3d
from sparseconv.maps.offsets import as_triple

CASES = [
    (k, s, d, m)
    for k in (1, 2, 3, 5)
    for s in (1, 2, 3)
    for d in (1, 2)
    for m in ("minkowski", "spconv")
    if not (s == 1 and m == "spconv")
]
# interpreted on CPU, four representative cases; on a GPU every case
TRITON_CASES = CASES if CUDA else [(3, 1, 1, "minkowski"), (2, 2, 1, "minkowski"),
                                   (3, 2, 2, "minkowski"), (5, 1, 1, "minkowski")]  # fmt: skip


def _check(
    coords,
    c_in,
    c_out,
    ks,
    s,
    d,
    mode,
    dataflow,
    transposed=False,
    dtype=torch.float64,
    tol=1e-9,
    ts=1,
    device="cpu",
):
    torch.manual_seed(0)
    kt = as_triple(ks, "k")
    feats = torch.randn(len(coords), c_in, dtype=dtype).to(device).requires_grad_(True)
    weight = torch.randn(math.prod(kt), c_in, c_out, dtype=dtype).to(device).requires_grad_(True)
    x = sc.SparseTensor(feats, coords.to(device), stride=ts)
    y = conv3d(
        x,
        weight,
        kernel_size=ks,
        stride=s,
        dilation=d,
        transposed=transposed,
        dataflow=dataflow,
        downsample_mode=mode,
    )
    grad = torch.randn_like(y.feats)
    gx, gw = torch.autograd.grad((y.feats * grad).sum(), [feats, weight])
    f2 = feats.detach().cpu().requires_grad_(True)
    w2 = weight.detach().cpu().requires_grad_(True)
    centred = as_triple(s, "s") == (1, 1, 1)
    out_coords = y.coords.cpu()
    # on a tensor at stride ts, offsets step d * ts raw units (a transposed conv: d * ts / s)
    step = as_triple(ts, "ts")
    if transposed:
        step = tuple(a // b for a, b in zip(step, as_triple(s, "s")))
    dense_d = tuple(a * b for a, b in zip(as_triple(d, "d"), step))
    ref = dense_conv(f2, coords, w2, kt, dense_d, out_coords, centred, transposed)
    rx, rw = torch.autograd.grad((ref * grad.cpu()).sum(), [f2, w2])
    for got, want, name in ((y.feats, ref, "y"), (gx, rx, "dX"), (gw, rw, "dW")):
        got = got.cpu()
        err = (got.double() - want.double()).norm() / want.double().norm().clamp(min=1e-30)
        assert err < tol, f"{name}: relative error {err:.2e}"
    return y


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k,s,d,mode", CASES)
def test_torch_dataflow_matches_dense(k, s, d, mode, device):
    coords = random_coords(80, extent=9, seed=k * 100 + s * 10 + d)
    _check(coords, 3, 5, k, s, d, mode, "torch", device=device)


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (3, 3)])
def test_transposed_matches_dense(k, s):
    coarse = random_coords(40, extent=6, seed=k + s, stride=s)
    _check(coarse, 4, 3, k, s, 1, "minkowski", "torch", transposed=True, ts=s)


def test_anisotropic_kernel_stride_dilation():
    coords = random_coords(90, extent=9, seed=11)
    _check(coords, 3, 4, (3, 1, 2), (2, 1, 3), (1, 2, 1), "spconv", "torch")


@pytest.mark.parametrize("dataflow", ["triton_gather_scatter", "triton_implicit_gemm"])
@pytest.mark.parametrize("k,s,d,mode", TRITON_CASES)
def test_triton_dataflows_match_dense(dataflow, k, s, d, mode):
    coords = random_coords(70, extent=8, seed=k + s + d)
    _check(
        coords, 3, 20, k, s, d, mode, dataflow, dtype=torch.float32, tol=1e-5,
        device=TRITON_DEVICE,
    )  # fmt: skip


@pytest.mark.parametrize("dataflow", ["triton_gather_scatter", "triton_implicit_gemm"])
def test_triton_transposed(dataflow):
    coarse = random_coords(30, extent=6, seed=5, stride=2)
    _check(
        coarse,
        5,
        3,
        2,
        2,
        1,
        "minkowski",
        dataflow,
        transposed=True,
        ts=2,
        dtype=torch.float32,
        tol=1e-5,
        device=TRITON_DEVICE,
    )


@needs_cpu_kernels
@pytest.mark.parametrize("k,s,d,mode", CASES)
def test_cpu_implicit_gemm_matches_dense(k, s, d, mode):
    coords = random_coords(80, extent=9, seed=k * 100 + s * 10 + d)
    # 20 output channels: one full 16-wide register panel and a padded one
    _check(coords, 3, 20, k, s, d, mode, "cpu_implicit_gemm", dtype=torch.float32, tol=1e-5)


@needs_cpu_kernels
@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (3, 3)])
def test_cpu_implicit_gemm_transposed(k, s):
    coarse = random_coords(40, extent=6, seed=k + s, stride=s)
    _check(
        coarse, 7, 3, k, s, 1, "minkowski", "cpu_implicit_gemm", transposed=True, ts=s,
        dtype=torch.float32, tol=1e-5,
    )  # fmt: skip


def test_strided_then_transposed_round_trip_uses_cached_map():
    coords = random_coords(120, extent=10, seed=9)
    x = sc.SparseTensor(torch.randn(len(coords), 4), coords)
    down = conv3d(x, torch.randn(8, 4, 6), kernel_size=2, stride=2)
    up = conv3d(down, torch.randn(8, 6, 4), kernel_size=2, stride=2, transposed=True)
    assert up.coords is x.coords and up.stride == (1, 1, 1)


@pytest.mark.parametrize("dataflow", ["torch_gather_scatter", "torch_output_blocks"])
@pytest.mark.parametrize("k,s,d,mode", CASES[::3])
def test_each_torch_algorithm_matches_dense(dataflow, k, s, d, mode):
    """The torch planner's two algorithms, each forced, on every third dense-reference case."""
    coords = random_coords(80, extent=9, seed=k * 100 + s * 10 + d)
    _check(coords, 3, 5, k, s, d, mode, dataflow)


@pytest.mark.parametrize("ts", [2, 4])
@pytest.mark.parametrize("k,s,d", [(3, 1, 1), (2, 2, 1), (3, 2, 1), (3, 1, 2)])
@pytest.mark.parametrize(
    "dataflow", ["torch", pytest.param("cpu_implicit_gemm", marks=needs_cpu_kernels)]
)
def test_input_at_tensor_stride_above_one(ts, k, s, d, dataflow):
    coarse = random_coords(70, extent=8, seed=ts * 10 + k, stride=ts)
    dtype, tol = (torch.float64, 1e-9) if dataflow == "torch" else (torch.float32, 1e-5)
    _check(coarse, 3, 4, k, s, d, "minkowski", dataflow, ts=ts, dtype=dtype, tol=tol)


@pytest.mark.parametrize("k,s,d,ts", [(3, 2, 2, 2), (2, 2, 2, 4), (3, 3, 2, 3)])
@pytest.mark.parametrize(
    "dataflow", ["torch", pytest.param("cpu_implicit_gemm", marks=needs_cpu_kernels)]
)
def test_transposed_dilated_with_generated_outputs(k, s, d, ts, dataflow):
    """No cached strided map: the transposed conv generates every reachable fine position."""
    coarse = random_coords(40, extent=6, seed=k + s + d, stride=ts)
    dtype, tol = (torch.float64, 1e-9) if dataflow == "torch" else (torch.float32, 1e-5)
    _check(coarse, 3, 2, k, s, d, "minkowski", dataflow, transposed=True, ts=ts, dtype=dtype,
           tol=tol)  # fmt: skip


@pytest.mark.parametrize("k,s,d", [(4, 1, 1), (4, 2, 1), (4, 1, 2), (4, 4, 1)])
def test_kernel_size_four(k, s, d):
    coords = random_coords(90, extent=9, seed=k * 7 + s + d)
    _check(coords, 3, 3, k, s, d, "minkowski", "torch")
