import pytest
import torch
from reference import CUDA, TRITON_DEVICE, needs_cpu_kernels, random_coords

import sparseconv as sc
from sparseconv.functional import SparseConvFunction, conv3d
from sparseconv.functional.dataflows import DATAFLOWS
from sparseconv.maps import build_kernel_map
from sparseconv.maps.kernel_map import KernelMap


@pytest.mark.parametrize("dataflow", ["torch", "triton_gather_scatter", "triton_implicit_gemm"])
@pytest.mark.parametrize("k,s", [(3, 1), (2, 2)])
def test_gradcheck_float64(dataflow, k, s):
    # Triton runs interpreted on CPU: tiny inputs and gradcheck's fast mode keep it to seconds.
    interpreted = dataflow != "torch" and not CUDA
    device = "cpu" if dataflow == "torch" else TRITON_DEVICE
    coords = random_coords(12 if interpreted else 25, extent=4, seed=k + s).to(device)
    km = build_kernel_map(coords, k, s)
    x = torch.randn(len(coords), 3, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(k**3, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    flow = DATAFLOWS[dataflow]
    assert torch.autograd.gradcheck(
        lambda a, b: SparseConvFunction.apply(a, b, km, flow), (x, w), fast_mode=interpreted
    )


@pytest.mark.parametrize(
    "case",
    [dict(kernel_size=3, dilation=2), dict(kernel_size=2, stride=2, transposed=True),
     dict(kernel_size=3, stride=2, transposed=True)],
    ids=["dilated", "transposed k2s2", "transposed k3s2"],
)  # fmt: skip
@pytest.mark.parametrize(
    "dataflow", ["torch", pytest.param("cpu_implicit_gemm", marks=needs_cpu_kernels)]
)
def test_gradcheck_dilated_and_transposed(case, dataflow):
    """float64 gradcheck (the torch dataflow); the C kernels compute in float32, so their
    gradients are compared with the float64 torch ones instead."""
    coords = random_coords(25, extent=4, seed=9, stride=2 if case.get("transposed") else 1)
    ts = 2 if case.get("transposed") else 1
    ks = case["kernel_size"]
    km = build_kernel_map(coords, tensor_stride=ts, **case)
    x = torch.randn(len(coords), 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(ks**3, 3, 2, dtype=torch.float64, requires_grad=True)
    if dataflow == "torch":
        assert torch.autograd.gradcheck(
            lambda a, b: SparseConvFunction.apply(a, b, km, DATAFLOWS["torch"]), (x, w)
        )
        return
    dy = torch.randn(km.n_out, 2, dtype=torch.float64)
    want = torch.autograd.grad(
        (SparseConvFunction.apply(x, w, km, DATAFLOWS["torch"]) * dy).sum(), (x, w)
    )
    xf, wf = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    got = torch.autograd.grad(
        (SparseConvFunction.apply(xf, wf, km, DATAFLOWS[dataflow]) * dy.float()).sum(), (xf, wf)
    )
    for g, r in zip(got, want):
        assert ((g.double() - r).norm() / r.norm()) < 1e-5


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)])
@pytest.mark.parametrize(
    "dataflow",
    ["torch", "triton_implicit_gemm", pytest.param("cpu_implicit_gemm", marks=needs_cpu_kernels)],
)
def test_half_precision_with_float32_accumulation(dtype, tol, dataflow):
    if dtype == torch.bfloat16 and dataflow.startswith("triton") and not CUDA:
        pytest.skip("the Triton interpreter (numpy) has no bfloat16; runs on a GPU")
    device = TRITON_DEVICE if dataflow.startswith("triton") else "cpu"
    coords = random_coords(200, extent=10, seed=3)
    x32 = torch.randn(len(coords), 16)
    w32 = torch.randn(27, 16, 16) * 0.2
    ref = conv3d(sc.SparseTensor(x32.double(), coords), w32.double(), dataflow="torch").feats
    x = sc.SparseTensor(x32.to(dtype), coords).to(device)
    y = conv3d(x, w32.to(dtype).to(device), dataflow=dataflow).feats
    assert y.dtype == dtype
    err = (y.cpu().double() - ref).norm() / ref.norm()
    assert err < tol


def test_empty_tensor_and_empty_offsets():
    empty = sc.SparseTensor(torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.int32))
    for kwargs in (dict(), dict(stride=2)):
        y = conv3d(
            empty,
            torch.randn(27 if not kwargs else 8, 4, 5),
            kernel_size=3 if not kwargs else 2,
            **kwargs,
        )
        assert y.feats.shape == (0, 5)
    # one isolated point: only the centre offset has pairs; channels not multiples of tiles
    one = sc.SparseTensor(torch.randn(1, 7), torch.tensor([[0, 1, 2, 3]], dtype=torch.int32))
    w = torch.randn(27, 7, 13)
    for flow in ("torch", "triton_gather_scatter", "triton_implicit_gemm"):
        device = "cpu" if flow == "torch" else TRITON_DEVICE
        y = conv3d(one.to(device), w.to(device), dataflow=flow)
        torch.testing.assert_close(y.feats.cpu(), one.feats @ w[13], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "dataflow", ["triton_implicit_gemm", pytest.param("cpu_implicit_gemm", marks=needs_cpu_kernels)]
)
def test_implicit_gemm_is_deterministic(dataflow):
    """Each implicit-GEMM dataflow named explicitly (auto picks the C one on CPU)."""
    device = TRITON_DEVICE if dataflow.startswith("triton") else "cpu"
    coords = random_coords(120 if device == "cpu" and not CUDA else 300, extent=8, seed=4)
    x = sc.SparseTensor(torch.randn(len(coords), 8), coords).to(device)
    w = torch.randn(27, 8, 8, device=device)
    runs = [conv3d(x, w, dataflow=dataflow, deterministic=True).feats for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    with pytest.raises(ValueError, match="atomics"):
        conv3d(x, w, dataflow="triton_gather_scatter", deterministic=True)


def test_bad_weight_and_inputs_are_rejected():
    coords = random_coords(20, seed=1)
    x = sc.SparseTensor(torch.randn(len(coords), 4), coords)
    with pytest.raises(ValueError, match="input channels"):
        conv3d(x, torch.randn(27, 5, 3))
    with pytest.raises(ValueError, match="kernel offsets"):
        conv3d(x, torch.randn(8, 4, 3))
    with pytest.raises(TypeError, match="dtype"):
        conv3d(x, torch.randn(27, 4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="dataflow"):
        conv3d(x, torch.randn(27, 4, 3), dataflow="cudnn")
    with pytest.raises(ValueError, match="kernel_size"):
        conv3d(x, torch.randn(216, 4, 3), kernel_size=6)
    with pytest.raises(ValueError, match="stride"):
        conv3d(x, torch.randn(27, 4, 3), stride=0)
    with pytest.raises(TypeError, match="SparseTensor"):
        conv3d(x.feats, torch.randn(27, 4, 3))


def test_grouping_planner_thresholds():
    from sparseconv.functional.grouping import plan_groups

    sizes = [100, 100, 90, 10, 0, 50]
    assert plan_groups(sizes, 0.0) == [[0, 1], [2], [5], [3]]
    groups = plan_groups(sizes, float("inf"))
    assert groups == [[0, 1, 2, 5, 3]]
    assert plan_groups(sizes, 0.25, skip=0) == [[1, 2, 5], [3]]  # 3 x 100 <= 1.25 x 240
    # results do not depend on the grouping
    coords = random_coords(200, extent=9, seed=8)
    km = build_kernel_map(coords, 3)
    x = torch.randn(len(coords), 6, dtype=torch.float64)
    w = torch.randn(27, 6, 4, dtype=torch.float64)
    from sparseconv.functional import dataflow_torch

    torch.testing.assert_close(
        dataflow_torch.forward(x, w, km, 0.0), dataflow_torch.forward(x, w, km, float("inf"))
    )


def test_implicit_gemm_row_order_only_changes_the_schedule():
    from sparseconv.kernels.implicit_gemm import implicit_gemm, neighbour_mask_order

    coords = random_coords(150, extent=7, seed=12).to(TRITON_DEVICE)
    nb = build_kernel_map(coords, 3).nbmap
    x = torch.randn(len(coords), 5, device=TRITON_DEVICE)
    w = torch.randn(27, 5, 6, device=TRITON_DEVICE)
    a = implicit_gemm(x, w, nb)
    order = neighbour_mask_order(nb)
    assert torch.equal(torch.sort(order).values, torch.arange(len(coords), device=order.device))
    # same sums per row; only the tile a row shares (and so BLAS/MMA rounding) differs
    torch.testing.assert_close(a, implicit_gemm(x, w, nb, order), rtol=1e-6, atol=1e-6)
    shuffled = torch.randperm(len(coords), device=TRITON_DEVICE)
    torch.testing.assert_close(a, implicit_gemm(x, w, nb, shuffled), rtol=1e-6, atol=1e-6)


def test_one_pair_per_row_plans_write_rows_directly():
    from sparseconv.functional import dataflow_torch

    coords = random_coords(300, extent=10, seed=21)
    x = sc.SparseTensor(torch.randn(len(coords), 3, dtype=torch.float64), coords)
    down = conv3d(x, torch.randn(8, 3, 4, dtype=torch.float64), kernel_size=2, stride=2)
    km = build_kernel_map(down.coords, 2, 2, tensor_stride=2, transposed=True, cache=down.cache)
    assert dataflow_torch._plan(
        km, False, 0.25
    ).injective  # up k2s2: each fine voxel has one parent
    assert not dataflow_torch._plan(
        km, True, 0.25
    ).injective  # its input gradient sums up to 8 children
    k3 = build_kernel_map(coords, 3, 2)
    assert (
        not dataflow_torch._plan(k3, False, 0.25).injective
        and dataflow_torch._plan(k3, True, 0.25).injective is False
    )
    w = torch.randn(8, 4, 3, dtype=torch.float64)
    ref = torch.zeros(km.n_out, 3, dtype=torch.float64)
    for k in range(8):
        i, j = km.pairs(k)
        ref.index_add_(0, j, down.feats[i] @ w[k])
    torch.testing.assert_close(dataflow_torch.forward(down.feats, w, km), ref)


@pytest.mark.parametrize("case", ["subm", "down", "up"])
def test_cpu_row_blocks_give_the_whole_step_results(monkeypatch, case):
    """Blocks of 7 rows (so every step, group and the identity offset spans several blocks)."""
    from sparseconv.functional import dataflow_torch

    _block_rows = dataflow_torch._block_rows
    coords = random_coords(300, extent=10, seed=23)
    x = sc.SparseTensor(torch.randn(len(coords), 5, dtype=torch.float64), coords)
    km = build_kernel_map(coords, 3, 1 if case == "subm" else 2)
    if case == "up":
        down = conv3d(x, torch.randn(8, 5, 5, dtype=torch.float64), kernel_size=2, stride=2)
        km = build_kernel_map(down.coords, 2, 2, tensor_stride=2, transposed=True, cache=down.cache)
        x = down
    w = torch.randn(km.kernel_volume, 5, 4, dtype=torch.float64)
    dy = torch.randn(km.n_out, 4, dtype=torch.float64)

    def run():
        km.plans.clear()
        return (
            dataflow_torch.forward(x.feats, w, km),
            dataflow_torch.backward_input(dy, w, km),
            dataflow_torch.backward_weight(x.feats, dy, km),
        )

    monkeypatch.setattr(dataflow_torch, "OUTPUT_BLOCKS_MAX_CHANNELS", 0)  # the scatter-add path
    monkeypatch.setattr(dataflow_torch, "_block_rows", lambda src, c_out: None)
    whole = run()
    monkeypatch.setattr(dataflow_torch, "_block_rows", _block_rows)
    monkeypatch.setattr(dataflow_torch, "CPU_BLOCK_BYTES", 7 * 8 * 5)
    monkeypatch.setattr(dataflow_torch, "MIN_BLOCK_ROWS", 1)
    assert dataflow_torch._block_rows(x.feats, 4) == 7
    for a, b in zip(run(), whole):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("case", ["subm", "down k3s2", "down k1s2", "no pairs"])
def test_output_blocks_sum_the_pairs_the_scatter_add_path_does(monkeypatch, case):
    """Per-row bag sums in blocks of about 10 pairs == index_add_ over whole steps, both ways.

    ``down k1s2`` leaves output rows (and in reverse input rows) without any pair: they are 0.
    """
    from sparseconv.functional import dataflow_torch, output_blocks

    coords = random_coords(300, extent=10, seed=24)
    k, s = {"subm": (3, 1), "down k3s2": (3, 2), "down k1s2": (1, 2), "no pairs": (1, 2)}[case]
    km = build_kernel_map(coords, k, s)
    if case == "no pairs":
        empty = km.in_idx[:0]
        km = KernelMap(empty, empty, torch.zeros_like(km.offset_ptr), km.out_coords, km.n_in,
                       km.offsets)  # fmt: skip
    x = torch.randn(km.n_in, 5, dtype=torch.float64)
    w = torch.randn(km.kernel_volume, 5, 4, dtype=torch.float64)
    dy = torch.randn(km.n_out, 4, dtype=torch.float64)

    def run():
        km.plans.clear()
        return dataflow_torch.forward(x, w, km), dataflow_torch.backward_input(dy, w, km)

    monkeypatch.setattr(dataflow_torch, "OUTPUT_BLOCKS_MAX_CHANNELS", 0)
    reference = run()
    monkeypatch.setattr(dataflow_torch, "OUTPUT_BLOCKS_MAX_CHANNELS", 32)
    monkeypatch.setattr(output_blocks, "PAIRS_BYTES", 10 * 8 * 5)
    monkeypatch.setattr(output_blocks, "MIN_BLOCK_PAIRS", 1)
    blocked = run()
    plan = output_blocks.plan(km, False, 10)
    assert len(plan.blocks) > 1 or case == "no pairs"
    assert sum(b.hi - b.lo for b in plan.blocks) == km.n_out
    for a, b in zip(blocked, reference):
        torch.testing.assert_close(a, b)
    if case == "down k1s2":
        assert (reference[0].abs().sum(1) == 0).any()  # rows with no pair are really there
