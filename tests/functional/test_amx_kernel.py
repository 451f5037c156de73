"""The bfloat16 AMX kernel (``implicit_gemm_amx.c``): same sums as widening to float32.

Products of bf16 numbers are exact in float32, so the AMX kernel and the float32 kernel on
widened operands compute the same sums in a different order: their bf16 outputs agree to one
bf16 rounding step, almost all of them bit for bit. Skipped on CPUs without AMX-BF16.
"""

import pytest
import torch
from reference import random_coords

import sparseconv as sc
from sparseconv.functional import conv3d, dataflow_cpu
from sparseconv.kernels import cpu_implicit_gemm as kernels
from sparseconv.maps import build_kernel_map

needs_amx = pytest.mark.skipif(
    not kernels.amx_available(), reason="this CPU (or build) has no usable AMX-BF16"
)


def _widened(x, w, nbmap, **epilogue):
    """The float32 kernel on the same bf16 operands, rounded once: the reference."""
    scale, shift, residual = (epilogue.get(k) for k in ("scale", "shift", "residual"))
    residual = None if residual is None else residual.float()
    out = kernels.implicit_gemm(
        x.float(), w.float(), nbmap, scale, shift, epilogue.get("relu", False), residual
    )
    return out.bfloat16()


def _assert_one_rounding_apart(got, want):
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    # one bf16 step (2**-8 relative) is the most the order of float32 sums can change
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=1e-3)
    assert (got == want).float().mean() > 0.99


@needs_amx
@pytest.mark.parametrize("c_in,c_out", [(1, 1), (4, 32), (7, 13), (32, 64), (33, 70), (96, 80)])
def test_amx_forward_equals_the_widened_float32_kernel(c_in, c_out):
    """Cin not a multiple of 32 and Cout not of 16 (zero padding), more than 4 panels of 16,
    row groups shorter than 16."""
    coords = random_coords(700, extent=10, seed=c_in + c_out)
    nbmap = build_kernel_map(coords, 3).nbmap
    torch.manual_seed(0)
    x = torch.randn(len(coords), c_in).bfloat16()
    w = (torch.randn(27, c_in, c_out) / c_in**0.5).bfloat16()
    _assert_one_rounding_apart(kernels.implicit_gemm_bf16(x, w, nbmap), _widened(x, w, nbmap))


@needs_amx
def test_amx_kernel_reads_a_maps_tile_lists_bit_for_bit(monkeypatch):
    coords = random_coords(900, extent=11, seed=5)
    nbmap = build_kernel_map(coords, 3).nbmap
    x, w = torch.randn(len(coords), 20).bfloat16(), (torch.randn(27, 20, 24) * 0.2).bfloat16()
    monkeypatch.setattr(kernels, "_tile_rows", lambda ldw, n, threads: 96)
    plan = kernels.tile_plan(nbmap, 96, len(coords))
    listed = kernels.implicit_gemm_bf16(x, w, nbmap)
    assert torch.equal(kernels.implicit_gemm_bf16(x, w, nbmap, planner=lambda t, n: plan), listed)


@needs_amx
@pytest.mark.parametrize("terms", ["scale shift relu", "residual relu", "scale residual"])
def test_amx_epilogue_equals_the_float32_epilogue(terms):
    coords = random_coords(500, extent=9, seed=3)
    nbmap = build_kernel_map(coords, 3).nbmap
    torch.manual_seed(1)
    x = torch.randn(len(coords), 24).bfloat16()
    w = (torch.randn(27, 24, 40) * 0.2).bfloat16()
    epilogue = {
        "scale": torch.rand(40) + 0.5 if "scale" in terms else None,
        "shift": torch.randn(40) if "shift" in terms else None,
        "residual": torch.randn(len(coords), 40).bfloat16() if "residual" in terms else None,
        "relu": "relu" in terms,
    }
    got = kernels.implicit_gemm_bf16(x, w, nbmap, **epilogue)
    _assert_one_rounding_apart(got, _widened(x, w, nbmap, **epilogue))
    if epilogue["relu"]:
        assert (got >= 0).all()


@needs_amx
def test_amx_is_deterministic_across_thread_counts():
    coords = random_coords(2000, extent=14, seed=5)
    nbmap = build_kernel_map(coords, 3).nbmap
    x = torch.randn(len(coords), 64).bfloat16()
    w = (torch.randn(27, 64, 48) * 0.1).bfloat16()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.implicit_gemm_bf16(x, w, nbmap)
        torch.set_num_threads(2)
        two = kernels.implicit_gemm_bf16(x, w, nbmap)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@needs_amx
def test_amx_bad_inputs_are_errors():
    x = torch.randn(3, 4).bfloat16()
    w = torch.randn(27, 4, 2).bfloat16()
    nb = torch.full((2, 27), -1, dtype=torch.int32)
    nb[1, 0] = 3  # x has rows 0..2
    with pytest.raises(IndexError, match="outside"):
        kernels.implicit_gemm_bf16(x, w, nb)
    with pytest.raises(TypeError, match="bfloat16"):
        kernels.implicit_gemm_bf16(x.float(), w.float(), nb)
    with pytest.raises(TypeError, match="bfloat16"):
        kernels.implicit_gemm_bf16(x.double(), w, nb)
    with pytest.raises(ValueError, match="disagree"):
        kernels.implicit_gemm_bf16(x, w[:8], nb)
    empty = kernels.implicit_gemm_bf16(x, w, nb[:0])
    assert empty.shape == (0, 2)
    no_columns = kernels.implicit_gemm_bf16(x, w[:, :, :0], nb)  # zero output channels
    assert no_columns.shape == (2, 0)


@needs_amx
def test_a_bf16_conv_and_its_gradients_use_amx_and_match_float64(monkeypatch):
    """conv3d on bf16 tensors: the forward pass and the input gradient run the AMX kernel (the
    widening path is switched off to prove it), and both agree with float64."""
    coords = random_coords(400, extent=9, seed=8)
    torch.manual_seed(2)
    x64 = torch.randn(len(coords), 12, dtype=torch.float64)
    w64 = torch.randn(27, 12, 9, dtype=torch.float64) * 0.2
    grad = torch.randn(len(coords), 9, dtype=torch.float64)
    calls = []
    amx = kernels.implicit_gemm_bf16
    monkeypatch.setattr(
        kernels, "implicit_gemm_bf16", lambda *a, **k: calls.append(1) or amx(*a, **k)
    )

    def grads(x, w, flow):
        x, w = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = conv3d(sc.SparseTensor(x, coords), w, dataflow=flow).feats
        return (y, *torch.autograd.grad((y * grad.to(y.dtype)).sum(), [x, w]))

    want = grads(x64, w64, "torch")
    got = grads(x64.bfloat16(), w64.bfloat16(), "cpu_implicit_gemm")
    assert len(calls) == 2  # forward and input gradient (the weight gradient: its own kernel)
    for g, r in zip(got, want):
        assert g.dtype == torch.bfloat16
        assert (g.double() - r).norm() / r.norm() < 1.5e-2


@needs_amx
def test_switching_amx_off_widens_instead(monkeypatch):
    coords = random_coords(300, extent=9, seed=9)
    km = build_kernel_map(coords, 3)
    x = torch.randn(len(coords), 16).bfloat16()
    w = (torch.randn(27, 16, 16) * 0.2).bfloat16()
    on = dataflow_cpu.forward(x, w, km)
    monkeypatch.setattr(kernels, "amx_available", lambda: False)
    off = dataflow_cpu.forward(x, w, km)
    assert off.dtype == torch.float32  # widened; the caller rounds it
    _assert_one_rounding_apart(on, off.bfloat16())


@needs_amx
@pytest.mark.parametrize("c_in,c_out", [(1, 1), (7, 13), (16, 16), (33, 70), (64, 48)])
def test_amx_weight_gradient_equals_the_widened_float32_kernel(c_in, c_out):
    """Channel counts off the 16-row / 16-column tiles, offsets with more pairs than one
    256-pair work item and offsets with a tail shorter than the 32-pair tile depth."""
    coords = random_coords(1500, extent=12, seed=c_in * c_out)
    km = build_kernel_map(coords, 3)
    torch.manual_seed(3)
    x = torch.randn(len(coords), c_in).bfloat16()
    dy = torch.randn(len(coords), c_out).bfloat16()
    pairs = (km.in_idx, km.out_idx, km.offset_ptr)
    got = kernels.weight_grad_bf16(x, dy, *pairs)
    want = kernels.weight_grad(x.float(), dy.float(), *pairs)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert int((km.offset_ptr[1:] - km.offset_ptr[:-1]).max()) > kernels.AMX_WEIGHT_GRAD_CHUNK
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)  # float32 sums, other order


@needs_amx
def test_amx_weight_gradient_is_deterministic_and_checks_its_input():
    coords = random_coords(1200, extent=12, seed=4)
    km = build_kernel_map(coords, 3)
    x = torch.randn(len(coords), 32).bfloat16()
    dy = torch.randn(len(coords), 32).bfloat16()
    pairs = (km.in_idx, km.out_idx, km.offset_ptr)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.weight_grad_bf16(x, dy, *pairs)
        torch.set_num_threads(2)
        two = kernels.weight_grad_bf16(x, dy, *pairs)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    bad = km.in_idx.clone()
    bad[0] = len(coords)
    with pytest.raises(IndexError, match="outside"):
        kernels.weight_grad_bf16(x, dy, bad, km.out_idx, km.offset_ptr)
    with pytest.raises(TypeError, match="bfloat16"):
        kernels.weight_grad_bf16(x.float(), dy, *pairs)


@needs_amx
def test_amx_store_rounds_exactly_as_torch():
    """An identity map and identity weights make the sums the inputs themselves, so the stored
    outputs must equal torch's float32 epilogue rounded to bf16 bit for bit: ties to even, the
    16-wide vector part and the scalar tail (Cout = 40); NaN, infinities and subnormals come in
    through the residual (in x they would poison a whole row of the product, as in any GEMM)."""
    torch.manual_seed(4)
    n, c = 64, 40
    x = (torch.randn(n, c) * 3).bfloat16()
    nbmap = torch.arange(n, dtype=torch.int32)[:, None]
    w = torch.eye(c).bfloat16()[None]
    scale, shift = torch.rand(c) + 0.5, torch.randn(c)
    residual = torch.randn(n, c)
    specials = [float("nan"), float("inf"), -float("inf"), 1e-39, -1e-39, 0.0]
    residual[0, :6] = residual[0, 34:40] = torch.tensor(specials)  # vector part and tail
    residual = residual.bfloat16()
    for relu in (False, True):
        got = kernels.implicit_gemm_bf16(x, w, nbmap, scale, shift, relu, residual)
        want = x.float() * scale + shift + residual.float()
        want = (torch.where(want > 0, want, torch.zeros(())) if relu else want).bfloat16()
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(
            got[~got.isnan()].view(torch.int16), want[~want.isnan()].view(torch.int16)
        )
    # exact ties: 1 + 2**-8 and 1 + 3 * 2**-8 lie halfway between bf16 numbers (to even: 1, 1 + 2**-6)
    x[1, [0, 35]] = torch.tensor([1.0, 1 + 2**-7]).bfloat16()
    residual[1, [0, 35]] = 2**-8
    got = kernels.implicit_gemm_bf16(x, w, nbmap, residual=residual)
    assert got[1, 0] == 1.0 and got[1, 35] == 1 + 2**-6
    assert torch.equal(
        got[1:].view(torch.int16), (x.float() + residual.float()).bfloat16()[1:].view(torch.int16)
    )


@needs_amx
def test_float32_output_keeps_the_float32_sums():
    """out_dtype=float32: the widened float32 kernel's result on the bf16-rounded operands, not
    rounded at the end (float32 sums in another order: 1e-5)."""
    coords = random_coords(600, extent=10, seed=11)
    nbmap = build_kernel_map(coords, 3).nbmap
    torch.manual_seed(5)
    x = torch.randn(len(coords), 24).bfloat16()
    w = (torch.randn(27, 24, 40) * 0.2).bfloat16()
    res = torch.randn(len(coords), 40)
    got = kernels.implicit_gemm_bf16(x, w, nbmap, residual=res, relu=True, out_dtype=torch.float32)
    want = kernels.implicit_gemm(x.float(), w.float(), nbmap, residual=res, relu=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="out_dtype"):
        kernels.implicit_gemm_bf16(x, w, nbmap, out_dtype=torch.float16)


@needs_amx
@pytest.mark.parametrize("c_in", [5, 16, 40])
def test_a_float32_source_is_rounded_as_torch_rounds_it(c_in):
    """A float32 src, rounded row by row as it is gathered, gives the same bits as the src
    rounded by torch first (vector part and tail of each row, ties, NaN)."""
    coords = random_coords(500, extent=10, seed=c_in)
    nbmap = build_kernel_map(coords, 3).nbmap
    torch.manual_seed(7)
    x = torch.randn(len(coords), c_in)
    x[0, 0] = 1 + 2**-8  # a tie: to even, 1.0
    x[1, -1] = float("nan")
    w = (torch.randn(27, c_in, 24) * 0.2).bfloat16()
    for out in (torch.float32, torch.bfloat16):
        got = kernels.implicit_gemm_bf16(x, w, nbmap, out_dtype=out)
        want = kernels.implicit_gemm_bf16(x.bfloat16(), w, nbmap, out_dtype=out)
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(got[~got.isnan()], want[~want.isnan()])


@needs_amx
def test_float32_convs_follow_torchs_float32_matmul_precision():
    """'medium' (bf16 allowed) runs float32 convs and their gradients on AMX with float32
    results; 'highest' (the default) keeps them exact float32."""
    coords = random_coords(500, extent=10, seed=12)
    torch.manual_seed(6)
    x = torch.randn(len(coords), 16, dtype=torch.float64)
    w = torch.randn(27, 16, 12, dtype=torch.float64) * 0.2
    grad = torch.randn(len(coords), 12, dtype=torch.float64)

    def run(feats, weight, flow="cpu_implicit_gemm"):
        feats, weight = feats.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        y = conv3d(sc.SparseTensor(feats, coords), weight, dataflow=flow).feats
        return (y, *torch.autograd.grad((y * grad.to(y.dtype)).sum(), [feats, weight]))

    exact = run(x, w, "torch")
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert not dataflow_cpu.float32_matmul_in_bf16()
        full = run(x.float(), w.float())
        torch.set_float32_matmul_precision("medium")
        assert dataflow_cpu.float32_matmul_in_bf16()
        medium = run(x.float(), w.float())
    finally:
        torch.set_float32_matmul_precision(before)
    for f, m, e in zip(full, medium, exact):
        assert f.dtype == m.dtype == torch.float32
        assert (f.double() - e).norm() / e.norm() < 1e-5  # exact float32
        assert 1e-5 < (m.double() - e).norm() / e.norm() < 1.5e-2  # bf16 operands
