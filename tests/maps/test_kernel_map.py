import pytest
import torch
from reference import assert_same_map, brute_force_pairs, random_coords

from sparseconv.maps import build_kernel_map
from sparseconv.maps.offsets import as_triple, kernel_offsets, scaled_offsets

CASES = [
    dict(kernel_size=k, stride=s, dilation=d, downsample_mode=m)
    for k in (1, 2, 3, 4, 5)
    for s in (1, 2, 3)
    for d in (1, 2)
    for m in ("minkowski", "spconv")
    if not (s == 1 and m == "spconv")
] + [dict(kernel_size=(3, 1, 2), stride=(2, 1, 3), dilation=(1, 2, 1), downsample_mode="spconv")]


def _pairs_by_offset(km):
    return [sorted(zip(*(t.tolist() for t in km.pairs(k)))) for k in range(km.kernel_volume)]


def _mappers_agree(coords, case):
    """The hash and merge-sort maps of ``case`` (identical), and the brute-force pairs."""
    km = build_kernel_map(coords, method="hash", **case)
    assert_same_map(km, build_kernel_map(coords, method="mergesort", **case))
    ks, s, d = (as_triple(case[n], n) for n in ("kernel_size", "stride", "dilation"))
    offs = kernel_offsets(ks, centred=s == (1, 1, 1))
    ref = brute_force_pairs(coords, km.out_coords, scaled_offsets(offs, d, (1, 1, 1)).tolist())
    return km, ref, (ks, s, d)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_map_equals_brute_force_and_mappers_agree(case):
    coords = random_coords(150, extent=10, seed=CASES.index(case))  # stable across processes
    km, ref, (ks, s, d) = _mappers_agree(coords, case)
    assert _pairs_by_offset(km) == ref
    # every output has an input, except minkowski cells that a kernel smaller than the stride
    # cannot reach (MinkowskiEngine keeps those as zero outputs too)
    if case["downsample_mode"] == "spconv" or all(a >= b and c == 1 for a, b, c in zip(ks, s, d)):
        assert set(km.out_idx.tolist()) == set(range(km.n_out))


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (3, 3)])
def test_strided_output_rules(k, s):
    coords = random_coords(200, extent=12, seed=3)
    mk = build_kernel_map(coords, k, s, downsample_mode="minkowski")
    expect = torch.unique(
        torch.cat([coords[:, :1], torch.div(coords[:, 1:], s, rounding_mode="floor") * s], 1), dim=0
    )
    assert torch.equal(mk.out_coords, expect)
    sp = build_kernel_map(coords, k, s, downsample_mode="spconv")
    # spconv rule: o on the s-grid with some input in o + [0, k) on every axis
    cand = set()
    for b, x, y, z in coords.tolist():
        for dx in range(k):
            for dy in range(k):
                for dz in range(k):
                    o = (x - dx, y - dy, z - dz)
                    if all(v % s == 0 for v in o):
                        cand.add((b, *o))
    assert sorted(map(tuple, sp.out_coords.tolist())) == sorted(cand)


def test_transposed_reuses_cached_strided_map():
    from sparseconv.maps import MapCache

    coords = random_coords(200, extent=12, seed=4)
    cache = MapCache()
    cache.coords[(1, 1, 1)] = coords
    down = build_kernel_map(coords, 2, 2, cache=cache)
    up = build_kernel_map(down.out_coords, 2, 2, tensor_stride=2, transposed=True, cache=cache)
    assert up.out_coords is coords
    assert sorted(zip(up.in_idx.tolist(), up.out_idx.tolist())) == sorted(
        zip(down.out_idx.tolist(), down.in_idx.tolist())
    )
    # without the cache a transposed map generates every reachable fine position
    gen = build_kernel_map(down.out_coords, 2, 2, tensor_stride=2, transposed=True)
    assert gen.n_out >= coords.shape[0]


def test_submanifold_symmetry_and_nbmap():
    coords = random_coords(300, extent=9, seed=5)
    km = build_kernel_map(coords, 3)
    assert km.submanifold and km.n_out == coords.shape[0]
    sizes = km.sizes
    assert sizes == sizes[::-1]
    nb = km.nbmap
    assert nb.shape == (coords.shape[0], 27)
    assert torch.equal(nb[:, 13], torch.arange(coords.shape[0], dtype=torch.int32))
    assert int((nb >= 0).sum()) == km.in_idx.numel()


def test_empty_inputs_work():
    empty = torch.zeros((0, 4), dtype=torch.int32)
    for kwargs in (dict(), dict(stride=2), dict(stride=2, downsample_mode="spconv")):
        for method in ("hash", "mergesort"):
            km = build_kernel_map(empty, 3, method=method, **kwargs)
            assert km.in_idx.numel() == 0 and km.n_out == 0
            assert km.nbmap.shape == (0, 27)


def test_maps_on_real_scan_agree(real_scan_points):
    import sparseconv as sc

    x, _ = sc.voxelize(real_scan_points[:, :3], 0.05)
    for kwargs in (
        dict(kernel_size=3),
        dict(kernel_size=2, stride=2),
        dict(kernel_size=3, stride=2, downsample_mode="spconv"),
        dict(kernel_size=3, dilation=2),
    ):
        a = build_kernel_map(x.coords, method="hash", **kwargs)
        b = build_kernel_map(x.coords, method="mergesort", **kwargs)
        assert torch.equal(a.in_idx, b.in_idx) and torch.equal(a.out_idx, b.out_idx)
        assert torch.equal(a.out_coords, b.out_coords) and torch.equal(a.offset_ptr, b.offset_ptr)


@pytest.mark.parametrize("order", ["key", "shuffled"])
@pytest.mark.parametrize("case", CASES[::5], ids=lambda c: "-".join(str(v) for v in c.values()))
def test_mergesort_in_key_order_and_shuffled(case, order):
    """Coordinates already in key order (as voxelize returns them) skip the sort; shuffled ones
    are sorted and the result un-permuted: the same map either way."""
    from sparseconv.maps import keys

    coords = random_coords(150, extent=10, seed=7)
    perm = torch.argsort(keys.pack(coords))
    if order == "shuffled":
        perm = torch.randperm(len(coords), generator=torch.Generator().manual_seed(1))
    km, ref, _ = _mappers_agree(coords[perm], case)
    assert _pairs_by_offset(km) == [sorted(r) for r in ref]


def test_auto_method_is_mergesort_on_cpu_and_bad_names_are_refused():
    coords = random_coords(200, extent=10, seed=3)
    assert_same_map(build_kernel_map(coords, 3), build_kernel_map(coords, 3, method="mergesort"))
    with pytest.raises(ValueError, match="method must be 'auto' or one of"):
        build_kernel_map(coords, 3, method="octree")
