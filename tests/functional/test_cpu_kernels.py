"""The fused C kernels of ``cpu_implicit_gemm``: build, edge cases, determinism, selection."""

import os
import shutil

import pytest
import torch
from reference import needs_cpu_kernels, random_coords

import sparseconv as sc
from sparseconv.functional import conv3d, dataflow_torch
from sparseconv.functional.dataflows import DATAFLOWS, resolve, set_autotune
from sparseconv.kernels import cpu_implicit_gemm as kernels
from sparseconv.kernels import cpu_library
from sparseconv.maps import build_kernel_map


def test_kernels_build_wherever_there_is_a_compiler():
    if shutil.which(os.environ.get("CC", "gcc")) is None:
        pytest.skip("no C compiler on this machine")
    assert kernels.available(), kernels.unavailable_reason()
    assert kernels.unavailable_reason() == ""


def test_without_a_compiler_the_dataflow_says_why_and_auto_uses_torch(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_library, "_state", {})
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    monkeypatch.setenv("SPARSECONV_CACHE", str(tmp_path))
    assert not kernels.available()
    assert "no-such-compiler-xyz" in kernels.unavailable_reason()
    coords = random_coords(50, seed=2)
    x = sc.SparseTensor(torch.randn(len(coords), 4), coords)
    w = torch.randn(27, 4, 3)
    with pytest.raises(ValueError, match="could not be built.*no-such-compiler"):
        conv3d(x, w, dataflow="cpu_implicit_gemm")
    km = build_kernel_map(coords, 3)
    set_autotune(False)
    try:
        assert resolve("auto", x.feats, w, km, False).name == "torch"
    finally:
        set_autotune(True)


@needs_cpu_kernels
@pytest.mark.parametrize("c_in,c_out", [(1, 1), (7, 13), (16, 16), (33, 70), (64, 64)])
def test_kernels_match_the_torch_dataflow(c_in, c_out):
    """Row tails (< 6 rows), padded column panels, Cin not a multiple of anything."""
    coords = random_coords(400, extent=9, seed=c_in + c_out)
    km = build_kernel_map(coords, 3)
    torch.manual_seed(0)
    x = torch.randn(len(coords), c_in)
    w = torch.randn(27, c_in, c_out)
    dy = torch.randn(len(coords), c_out)
    flow = DATAFLOWS["cpu_implicit_gemm"]
    tol = dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(flow.forward(x, w, km), dataflow_torch.forward(x, w, km), **tol)
    torch.testing.assert_close(
        flow.backward_input(dy, w, km), dataflow_torch.backward_input(dy, w, km), **tol
    )
    torch.testing.assert_close(
        flow.backward_weight(x, dy, km), dataflow_torch.backward_weight(x, dy, km), **tol
    )


@needs_cpu_kernels
def test_more_pairs_per_offset_than_one_weight_chunk():
    """Weight-gradient chunks of 128 pairs: offsets with several chunks, summed across threads."""
    coords = random_coords(3000, extent=16, batches=1, seed=5)
    km = build_kernel_map(coords, 3)
    assert max(km.sizes) > 3 * kernels.WEIGHT_GRAD_CHUNK
    x = torch.randn(len(coords), 8)
    dy = torch.randn(len(coords), 5)
    got = kernels.weight_grad(x, dy, km.in_idx, km.out_idx, km.offset_ptr)
    torch.testing.assert_close(got, dataflow_torch.backward_weight(x, dy, km), rtol=1e-4, atol=1e-4)


@needs_cpu_kernels
def test_empty_inputs_and_rows_without_neighbours():
    nb = torch.full((5, 27), -1, dtype=torch.int32)
    nb[2, 13] = 0
    x = torch.randn(1, 4)
    w = torch.randn(27, 4, 3)
    y = kernels.implicit_gemm(x, w, nb)
    assert torch.equal(y[[0, 1, 3, 4]], torch.zeros(4, 3))
    torch.testing.assert_close(y[2], x[0] @ w[13])
    assert kernels.implicit_gemm(x[:0], w, nb[:0]).shape == (0, 3)
    assert kernels.implicit_gemm(x, w[:, :, :0], nb).shape == (5, 0)  # zero output channels
    ptr = torch.zeros(28, dtype=torch.int64)
    none = torch.zeros(0, dtype=torch.int64)
    assert torch.equal(kernels.weight_grad(x, y, none, none, ptr), torch.zeros(27, 4, 3))
    empty = sc.SparseTensor(torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.int32))
    assert conv3d(empty, w, dataflow="cpu_implicit_gemm").feats.shape == (0, 3)


@needs_cpu_kernels
def test_bad_indices_and_dtypes_are_errors_not_garbage():
    x = torch.randn(3, 4)
    w = torch.randn(27, 4, 2)
    nb = torch.full((2, 27), -1, dtype=torch.int32)
    nb[1, 0] = 3  # x has rows 0..2
    with pytest.raises(IndexError, match="outside"):
        kernels.implicit_gemm(x, w, nb)
    with pytest.raises(TypeError, match="float32"):
        kernels.implicit_gemm(x.double(), w.double(), nb)  # the adapter widens halves, not this
    with pytest.raises(ValueError, match="disagree"):
        kernels.implicit_gemm(x, w[:8], nb)
    ptr = torch.tensor([0] + [1] * 27)
    with pytest.raises(IndexError, match="outside"):
        kernels.weight_grad(x, x, torch.tensor([5]), torch.tensor([0]), ptr)
    coords = random_coords(30, seed=3)
    x64 = sc.SparseTensor(torch.randn(len(coords), 4, dtype=torch.float64), coords)
    with pytest.raises(ValueError, match="runs float32"):
        conv3d(x64, torch.randn(27, 4, 2, dtype=torch.float64), dataflow="cpu_implicit_gemm")


@needs_cpu_kernels
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)])
def test_half_precision_gradients_are_widened_to_float32(dtype, tol):
    """dX and dW of half-precision operands against float64, in the operands' dtypes."""
    coords = random_coords(300, extent=9, seed=8)
    torch.manual_seed(2)
    x64 = torch.randn(len(coords), 12, dtype=torch.float64)
    w64 = torch.randn(27, 12, 9, dtype=torch.float64) * 0.2
    grad = torch.randn(len(coords), 9, dtype=torch.float64)

    def grads(x, w, flow):
        x, w = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = conv3d(sc.SparseTensor(x, coords), w, dataflow=flow).feats
        return torch.autograd.grad((y * grad.to(y.dtype)).sum(), [x, w])

    want = grads(x64, w64, "torch")
    got = grads(x64.to(dtype), w64.to(dtype), "cpu_implicit_gemm")
    for g, r in zip(got, want):
        assert g.dtype == dtype
        assert (g.double() - r).norm() / r.norm() < tol


@needs_cpu_kernels
def test_deterministic_on_cpu_uses_the_c_kernels_and_repeats_bitwise():
    coords = random_coords(600, extent=10, seed=6)
    torch.manual_seed(1)
    feats = torch.randn(len(coords), 24, requires_grad=True)
    w = torch.randn(27, 24, 40, requires_grad=True)
    km = build_kernel_map(coords, 3)
    assert resolve("auto", feats, w, km, True).name == "cpu_implicit_gemm"

    def run():
        y = conv3d(sc.SparseTensor(feats, coords), w, deterministic=True).feats
        return (y, *torch.autograd.grad(y.square().sum(), [feats, w]))

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


@needs_cpu_kernels
def test_thread_count_is_torchs(monkeypatch):
    """The kernels take torch.get_num_threads(): one thread gives the same forward result."""
    coords = random_coords(500, extent=10, seed=7)
    x = torch.randn(len(coords), 16)
    w = torch.randn(27, 16, 16)
    nb = build_kernel_map(coords, 3).nbmap
    km = build_kernel_map(coords, 3)
    dy = torch.randn(len(coords), 16)

    def grad_w():
        return kernels.weight_grad(x, dy, km.in_idx, km.out_idx, km.offset_ptr)

    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, one_dw = kernels.implicit_gemm(x, w, nb), grad_w()
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, kernels.implicit_gemm(x, w, nb))  # output rows are thread-private
    for threads in (2, 3):
        torch.set_num_threads(threads)
        try:
            assert torch.equal(one_dw, grad_w())  # slots summed in slot order, any thread count
        finally:
            torch.set_num_threads(n)


def _random_nbmap(n_dst: int, n_src: int, k: int, density: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    nb = torch.randint(0, n_src, (n_dst, k), generator=gen, dtype=torch.int32)
    return torch.where(torch.rand(n_dst, k, generator=gen) < density, nb, -1)


@needs_cpu_kernels
@pytest.mark.parametrize("n_dst,k,tile", [(1000, 27, 32), (1000, 27, 333), (77, 8, 1024),
                                          (300, 1, 64), (130, 70, 32)])  # fmt: skip
def test_tile_plans_hold_every_neighbour_once(n_dst, k, tile, monkeypatch):
    """...and the kernel reading them gives the listing's result bit for bit. K > 64 (two
    mask words), a last tile shorter than the rest, K = 1."""
    nbmap = _random_nbmap(n_dst, 500, k, 0.3, seed=n_dst + k)
    plan = kernels.tile_plan(nbmap, tile, 500)
    n_tiles = -(-n_dst // tile)
    assert plan.ptr.shape == (n_tiles * k + 1,) and int(plan.ptr[-1]) == int((nbmap >= 0).sum())
    for t in (0, n_tiles - 1):
        for j in (0, k - 1):
            lo, hi = int(plan.ptr[t * k + j]), int(plan.ptr[t * k + j + 1])
            rows = torch.arange(t * tile, min((t + 1) * tile, n_dst))
            with_neighbour = rows[nbmap[rows, j] >= 0]
            assert torch.equal(plan.row[lo:hi].long() + t * tile, with_neighbour)
            assert torch.equal(plan.src[lo:hi], nbmap[with_neighbour, j])
    torch.manual_seed(0)
    src, w = torch.randn(500, 12), torch.randn(k, 12, 20)
    monkeypatch.setattr(kernels, "_tile_rows", lambda ldw, n, threads: tile)
    listed = kernels.implicit_gemm(src, w, nbmap)
    assert torch.equal(kernels.implicit_gemm(src, w, nbmap, planner=lambda t, n: plan), listed)


@needs_cpu_kernels
def test_tile_plans_refuse_bad_rows_and_plans_made_for_another_call(monkeypatch):
    nbmap = _random_nbmap(200, 100, 27, 0.3, seed=1)
    with pytest.raises(IndexError, match="outside the feature matrix"):
        kernels.tile_plan(nbmap, 64, 50)  # rows up to 99 named
    with pytest.raises(ValueError, match="at least 1 row"):
        kernels.tile_plan(nbmap, 0, 100)
    src, w = torch.randn(100, 4), torch.randn(27, 4, 8)
    other = kernels.tile_plan(nbmap, 7, 100)
    with pytest.raises(ValueError, match="was not made for this call"):
        kernels.implicit_gemm(src, w, nbmap, planner=lambda t, n: other)
    # as many tiles, fewer rows: its tile rows past the table's end would be written
    monkeypatch.setattr(kernels, "_tile_rows", lambda ldw, n, threads: 256)
    longer = kernels.tile_plan(_random_nbmap(210, 100, 27, 0.3, seed=2), 256, 100)
    with pytest.raises(ValueError, match="was not made for this call"):
        kernels.implicit_gemm(src, w, nbmap, planner=lambda t, n: longer)
    empty = kernels.tile_plan(nbmap[:0], 64, 100)
    assert empty.ptr.tolist() == [0] and empty.src.numel() == 0


@needs_cpu_kernels
def test_submanifold_maps_keep_tile_lists_from_the_first_call_other_maps_from_the_second():
    from sparseconv.maps.kernel_map import PlanKind

    coords = random_coords(600, extent=12, seed=3)
    x = sc.SparseTensor(torch.randn(len(coords), 8), coords)
    w3, w2 = torch.randn(27, 8, 8), torch.randn(8, 8, 8)
    flow = DATAFLOWS["cpu_implicit_gemm"]

    def lists(km):
        return [key for key in km.plans if key[0] is PlanKind.CPU_TILE_LISTS]

    subm = build_kernel_map(coords, 3)
    first = flow.forward(x.feats, w3, subm)
    assert len(lists(subm)) == 1
    assert torch.equal(flow.forward(x.feats, w3, subm), first)  # read from the kept lists
    assert torch.equal(first, kernels.implicit_gemm(x.feats, w3, subm.nbmap))
    strided = build_kernel_map(coords, 2, stride=2)
    flow.forward(x.feats, w2, strided)
    assert lists(strided) == []
    flow.forward(x.feats, w2, strided)
    assert len(lists(strided)) == 1


@needs_cpu_kernels
def test_packed_weights_are_kept_while_the_weight_is_unchanged():
    import copy
    import gc

    nbmap = _random_nbmap(300, 100, 27, 0.3, seed=4)
    src = torch.randn(100, 8)
    weight = torch.nn.Parameter(torch.randn(27, 8, 24))
    with torch.no_grad():
        first = kernels.implicit_gemm(src, weight, nbmap)
        kept = dict(kernels._layouts_of(weight))
        assert len(kept) == 1
        assert torch.equal(kernels.implicit_gemm(src, weight, nbmap), first)
        assert kernels._layouts_of(weight) == kept  # reused, not repacked
        weight.mul_(2)  # an in-place write (an optimiser step, pruning) bumps the version
        assert torch.equal(kernels.implicit_gemm(src, weight, nbmap), first * 2)
        weight.data = torch.randn(27, 8, 24)  # new storage
        expected = _forward_by_offsets(src, weight.data, nbmap)
        torch.testing.assert_close(kernels.implicit_gemm(src, weight, nbmap), expected)
    assert not weight.__dict__  # nothing rides on the weight: copies and pickles stay lean
    assert not kernels._layouts_of(copy.deepcopy(weight))
    key = id(weight)
    del weight
    gc.collect()
    assert key not in kernels._LAYOUTS  # dropped with its weight
    tracked = torch.randn(27, 8, 24, requires_grad=True)
    kernels.implicit_gemm(src, tracked, nbmap)  # autograd is tracking it: packed per call
    assert id(tracked) not in kernels._LAYOUTS


def _forward_by_offsets(src, weight, nbmap):
    out = torch.zeros(nbmap.shape[0], weight.shape[2])
    for k in range(nbmap.shape[1]):
        rows = (nbmap[:, k] >= 0).nonzero().view(-1)
        out[rows] += src[nbmap[rows, k].long()] @ weight[k]
    return out
