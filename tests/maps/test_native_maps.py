"""The C mapper (``kernels/cpu/kernel_map.c``) against the torch reference mappers."""

import pytest
import torch
from reference import assert_same_map, needs_cpu_kernels, random_coords
from test_kernel_map import CASES

from sparseconv.maps import MapCache, build_kernel_map, tables

pytestmark = needs_cpu_kernels


def _reference(coords, monkeypatch, **kwargs):
    with monkeypatch.context() as patch:
        patch.setattr(tables, "USE_NATIVE", False)
        return build_kernel_map(coords, **kwargs)


@pytest.mark.parametrize("method", ["hash", "mergesort"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_native_map_equals_the_torch_reference(case, method, monkeypatch):
    coords = random_coords(160, extent=10, seed=CASES.index(case))
    native = build_kernel_map(coords, method=method, **case)
    assert not native.has_csr or native.in_idx.numel() == 0  # built as a neighbour table
    reference = _reference(coords, monkeypatch, method=method, **case)
    assert_same_map(native, reference)
    assert torch.equal(native.nbmap, reference.nbmap)


@pytest.mark.parametrize("ts", [1, 2, 4, 8])
@pytest.mark.parametrize("k,s,transposed", [(3, 1, False), (2, 2, False), (3, 2, False),
                                            (2, 2, True), (3, 2, True)])  # fmt: skip
def test_tensor_strides_and_generated_transposed_outputs(ts, k, s, transposed, monkeypatch):
    if transposed and ts % s:
        pytest.skip("a transposed conv needs a tensor stride divisible by its stride")
    coords = random_coords(200, extent=12, seed=ts * 10 + k, stride=ts)
    kwargs = dict(kernel_size=k, stride=s, tensor_stride=ts, transposed=transposed)
    for method in ("hash", "mergesort"):
        native = build_kernel_map(coords, method=method, **kwargs)
        assert_same_map(native, _reference(coords, monkeypatch, method=method, **kwargs))


def test_cached_transposed_map_and_its_input_gradient_view(monkeypatch):
    coords = random_coords(300, extent=12, seed=9)

    def both(fn):
        return fn(), _in_reference(monkeypatch, fn)

    def build():
        cache = MapCache()
        cache.coords[(1, 1, 1)] = coords
        down = build_kernel_map(coords, 2, 2, cache=cache)
        up = build_kernel_map(down.out_coords, 2, 2, tensor_stride=2, transposed=True,
                              cache=cache)  # fmt: skip
        return down, up

    (down, up), (down_ref, up_ref) = both(build)
    assert_same_map(up, up_ref)
    assert torch.equal(down.transposed_view().nbmap, down_ref.transposed_view().nbmap)
    assert torch.equal(up.nbmap, up_ref.nbmap)


def _in_reference(monkeypatch, fn):
    with monkeypatch.context() as patch:
        patch.setattr(tables, "USE_NATIVE", False)
        return fn()


def test_empty_inputs_and_outputs_without_pairs():
    empty = torch.zeros((0, 4), dtype=torch.int32)
    for kwargs in (dict(), dict(stride=2), dict(stride=2, transposed=True, tensor_stride=2)):
        km = build_kernel_map(empty, 3, **kwargs)
        assert km.n_out == 0 and km.in_idx.numel() == 0 and km.offset_ptr.tolist() == [0] * 28


@pytest.mark.parametrize("threads", [1, 2])
def test_identical_at_one_and_two_threads(threads, real_scan_points):
    import sparseconv as sc

    x, _ = sc.voxelize(real_scan_points[:, :3], 0.05)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ones = [build_kernel_map(x.coords, **kw) for kw in _REAL_CASES]
        torch.set_num_threads(threads)
        for method in ("hash", "mergesort"):
            for kw, one in zip(_REAL_CASES, ones):
                assert_same_map(build_kernel_map(x.coords, method=method, **kw), one)
    finally:
        torch.set_num_threads(saved)


_REAL_CASES = (
    dict(kernel_size=3),
    dict(kernel_size=2, stride=2),
    dict(kernel_size=3, stride=2, downsample_mode="spconv"),
    dict(kernel_size=3, dilation=2),
    dict(kernel_size=5),
)


def test_real_scan_native_equals_reference(real_scan_points, monkeypatch):
    import sparseconv as sc

    x, _ = sc.voxelize(real_scan_points[:, :3], 0.05)
    for kw in _REAL_CASES:
        assert_same_map(build_kernel_map(x.coords, **kw), _reference(x.coords, monkeypatch, **kw))


def test_duplicate_keys_are_refused_by_the_native_hash_table():
    from sparseconv.kernels import cpu_kernel_map

    keys = torch.tensor([5, 7, 5], dtype=torch.int64)
    with pytest.raises(ValueError, match="duplicate"):
        cpu_kernel_map.hash_table(keys)


def test_implicit_gemm_inference_never_builds_the_pair_lists():
    import sparseconv as sc

    coords = random_coords(400, extent=12, seed=3)
    x = sc.SparseTensor(torch.randn(len(coords), 4), coords)
    with torch.no_grad():
        y = sc.functional.conv3d(x, torch.randn(27, 4, 8), dataflow="cpu_implicit_gemm")
        sc.functional.conv3d(y, torch.randn(8, 8, 8), kernel_size=2, stride=2,
                             dataflow="cpu_implicit_gemm")  # fmt: skip
    assert x.cache.kmaps and all(not km.has_csr for km in x.cache.kmaps.values())


def test_row_counts_beyond_int32_are_refused_before_allocating(monkeypatch):
    from sparseconv.maps import build

    coords = random_coords(50, extent=6, seed=1)
    monkeypatch.setattr(build, "MAX_ROWS", 40)
    with pytest.raises(ValueError, match=r"int32, so at most 40 rows; got \d+"):
        build_kernel_map(coords, 3)
