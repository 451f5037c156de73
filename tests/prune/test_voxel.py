"""Voxel pruning: identity at keep 1.0, smaller later maps at 0.5, every point labelled,
learned scores train, deterministic inference, bad input."""

import copy
import math

import pytest
import torch

import sparseconv as sc
from sparseconv.kernels import cpu_kernel_map


def _points(n=5000, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, 3, generator=g) * 3
    x, p2v = sc.voxelize(pts, 0.05, torch.randn(n, 4, generator=g))
    return x, p2v, torch.cat([torch.zeros(n, 1), pts], 1)


def _fresh(x):
    return sc.SparseTensor(x.feats, x.coords)


def _assert_every_point_labelled(pruned, x, p2v):
    with torch.no_grad():
        logits = pruned(_fresh(x))
    assert logits.shape == (len(x.coords), 5) and torch.isfinite(logits).all()
    per_point = sc.devoxelize(sc.SparseTensor(logits, x.coords), p2v)
    assert per_point.shape[0] == p2v.shape[0] and (per_point.abs().sum(1) > 0).all()


def test_keep_ratio_one_is_the_identity():
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25).eval()
    x, _, _ = _points()
    pruned = sc.prune.voxel_prune(net, keep_ratio=1.0)
    with torch.no_grad():
        torch.testing.assert_close(pruned(_fresh(x)), net(_fresh(x)))
    assert all(k == n for n, k in sc.prune.voxel_counts(pruned, _fresh(x)).values())


def test_half_the_voxels_shrink_the_later_maps_and_every_point_is_labelled():
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25).eval()
    x, p2v, _ = _points()
    every_stage = [f"down.{i}.0.0" for i in range(4)]
    pruned = sc.prune.voxel_prune(net, keep_ratio=0.5, layers=every_stage, granularity="voxel")
    counts = sc.prune.voxel_counts(pruned, _fresh(x))
    assert sorted(counts) == every_stage
    once = sc.prune.voxel_prune(net, 0.5, granularity="voxel")
    assert list(sc.prune.voxel_counts(once, _fresh(x))) == ["down.0.0.0"]
    dense, thin = sc.prune.stride_counts(net, _fresh(x)), sc.prune.stride_counts(once, _fresh(x))
    assert dense["1x1x1"] == thin["1x1x1"] == len(x.coords)
    assert thin["2x2x2"] < 0.6 * dense["2x2x2"] and thin["4x4x4"] < dense["4x4x4"]
    assert all(thin[s] <= dense[s] for s in ("8x8x8", "16x16x16"))  # coarse cells merge
    for name, (n, k) in counts.items():
        assert k == -(-n // 2), name  # ceil(n / 2) per scan
    macs = sc.prune.count_macs(pruned, _fresh(x))["total"]
    assert macs < 0.8 * sc.prune.count_macs(net, _fresh(x))["total"]
    _assert_every_point_labelled(pruned, x, p2v)


def test_cells_halve_every_coarser_stride_and_every_voxel_gets_decoder_features():
    """The default: whole output cells of every strided conv, so each stride >= 2 holds half
    its cells (here every block has several), and the decoder output reaches every voxel."""
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25).eval()
    x, p2v, _ = _points()
    pruned = sc.prune.voxel_prune(net, keep_ratio=0.5)
    assert list(sc.prune.voxel_counts(pruned, _fresh(x))) == [f"down.{i}.0.0" for i in range(4)]
    dense, thin = sc.prune.stride_counts(net, _fresh(x)), sc.prune.stride_counts(pruned, _fresh(x))
    assert thin["1x1x1"] == len(x.coords)
    for stride in ("2x2x2", "4x4x4", "8x8x8", "16x16x16"):
        assert thin[stride] <= 0.7 * dense[stride], (stride, thin, dense)
    _assert_every_point_labelled(pruned, x, p2v)


def _line_of_cells():
    """One scan, x = 0..7 at y = z = 0: cells of 2 along x are {0,1} {2,3} {4,5} {6,7}, blocks
    of 4 are {0..3} {4..7}; scores rank the cells 3 > 2 > 1 > 0 by their best voxel."""
    coords = torch.tensor([[0, i, 0, 0] for i in range(8)], dtype=torch.int32)
    scores = torch.tensor([0.1, 0.4, 0.2, 0.3, 0.9, 0.5, 0.6, 1.0])
    return sc.SparseTensor(scores[:, None], coords), scores


def test_cells_known_answer_best_cell_per_block_then_the_best_others():
    x, scores = _line_of_cells()
    pruner = sc.nn.VoxelPrune(keep_ratio=0.5, cell=(2, 2, 2))
    rows, source = pruner.kept_cells(x, scores)
    # the best cell of block {0..3} is {0,1} (0.4 > 0.3), of block {4..7} {6,7} (1.0 > 0.9):
    # that spends the budget ceil(0.5 * 4) = 2
    assert rows.tolist() == [0, 1, 6, 7]
    # dropped cells take the first kept row of the nearest kept cell of their block
    assert source.tolist() == [0, 1, 0, 0, 2, 2, 2, 3]
    kept = pruner(x)
    assert kept.feats[:, 0].tolist() == scores[[0, 1, 6, 7]].tolist()
    back = sc.nn.scatter_to(kept, x)
    assert back.coords is x.coords
    assert back.feats[:, 0].tolist() == scores[[0, 1, 0, 0, 6, 6, 6, 7]].tolist()
    wide = sc.nn.VoxelPrune(keep_ratio=0.75, cell=(2, 2, 2)).kept_cells(x, scores)[0]
    assert wide.tolist() == [0, 1, 4, 5, 6, 7]  # ceil(3): the next best cell is {4,5} (0.9)
    low = sc.nn.VoxelPrune(threshold=0.95, cell=(2, 2, 2)).kept_cells(x, scores)[0]
    assert low.tolist() == [0, 1, 6, 7]  # below the threshold, but every block keeps its best


def _random_scans(seed: int, scans: int, stride: int = 1, extent: float = 2.0, n: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = n or int(torch.randint(50, 2500, (1,), generator=g))
    pts = (
        (torch.rand(n, 3, generator=g) - 0.3)
        * extent
        * float(torch.randint(1, 4, (1,), generator=g))
    )
    batch = torch.randint(0, scans, (n, 1), generator=g)
    coords = torch.cat([batch, torch.floor(pts / 0.05).int() * stride], 1).int()
    coords = torch.unique(coords, dim=0)  # sorted, as voxelize gives them
    x = sc.SparseTensor(torch.randn(len(coords), 3, generator=g), coords, stride=stride)
    scores = torch.randint(0, 6, (len(coords),), generator=g).float()  # many ties
    return x, scores


@pytest.mark.skipif(not cpu_kernel_map.available(), reason="needs the C kernels")
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    ("kwargs", "cell", "stride"),
    [
        (dict(keep_ratio=0.5), (2, 2, 2), 1),
        (dict(keep_ratio=0.3), (2, 2, 2), 2),
        (dict(keep_ratio=0.9), (2, 1, 2), 1),
        (dict(keep_ratio=0.6), (3, 3, 3), 1),  # not a power of two: the division path
        (dict(threshold=3.0), (2, 2, 2), 4),
    ],
)
def test_cells_c_pick_equals_the_torch_reference(seed, kwargs, cell, stride):
    """Negative coordinates, several scans, ties: the C pass and the torch reference agree on
    every kept row and every dropped row's source."""
    x, scores = _random_scans(seed, scans=3, stride=stride)
    pruner = sc.nn.VoxelPrune(cell=cell, **kwargs)
    rows, source = pruner.kept_cells(x, scores)
    want_rows, want_source = pruner._kept_cells_torch(x, scores, tuple(stride * c for c in cell))
    assert rows.tolist() == want_rows.tolist()
    assert source.tolist() == want_source.tolist()
    size = torch.tensor([1, *cell]) * torch.tensor([1, stride, stride, stride])
    all_cells = torch.div(x.coords, size, rounding_mode="floor")  # (scan, cell)
    kept_cells = torch.unique(all_cells[rows], dim=0)
    whole = (all_cells[:, None] == kept_cells[None]).all(-1).any(1)
    assert torch.equal(whole.nonzero().flatten(), rows)  # whole cells, nothing half-kept
    assert (source >= 0).all() and (source < len(rows)).all()


@pytest.mark.skipif(not cpu_kernel_map.available(), reason="needs the C kernels")
@pytest.mark.parametrize("scans", [1, 2])
def test_cells_c_pick_by_magnitude_equals_the_torch_reference(scans):
    """The magnitude score the C pass computes from the features itself keeps the same rows
    and sources as the torch reference given the feature norms (and given scores, with ties,
    on a large scan too)."""
    x, scores = _random_scans(7, scans=scans, extent=12.0, n=60000)
    pruner = sc.nn.VoxelPrune(keep_ratio=0.5, cell=(2, 2, 2))
    for given in (scores, None):
        rows, source = pruner.kept_cells(x, given)
        reference = x.feats.norm(dim=1) if given is None else given
        want_rows, want_source = pruner._kept_cells_torch(x, reference, (2, 2, 2))
        assert torch.equal(rows, want_rows) and torch.equal(source, want_source)
    with pytest.raises(ValueError, match="exactly one"):
        cpu_kernel_map.select_cells(
            torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
            torch.zeros(1, dtype=torch.long), (2, 2, 2), None, 0.5, None,
        )  # fmt: skip


def test_cells_fill_passes_gradients_to_the_kept_voxels():
    x, scores = _line_of_cells()
    pruner = sc.nn.VoxelPrune(keep_ratio=0.5, cell=(2, 2, 2))
    kept = pruner(x)
    feats = kept.feats.detach().clone().requires_grad_(True)
    sc.nn.scatter_to(kept.replace_feats(feats), x).feats.sum().backward()
    assert feats.grad[:, 0].tolist() == [3.0, 1.0, 3.0, 1.0]  # itself plus the rows it fills


def test_magnitude_keeps_the_largest_voxels_per_scan():
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]],
                          dtype=torch.int32)  # fmt: skip
    feats = torch.tensor([[1.0], [3.0], [2.0], [5.0], [4.0]])
    kept = sc.nn.VoxelPrune(keep_ratio=0.5)(sc.SparseTensor(feats, coords))
    assert kept.coords.tolist() == [[0, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0]]  # ceil per scan
    assert kept.feats[:, 0].tolist() == [3.0, 2.0, 5.0]
    by_threshold = sc.nn.VoxelPrune(threshold=2.5)(sc.SparseTensor(feats, coords))
    assert by_threshold.feats[:, 0].tolist() == [3.0, 5.0, 4.0]


@pytest.mark.parametrize("keep", [0.1, 0.35, 0.5, 0.9])
def test_ties_go_to_the_lower_rows_as_a_stable_sort_would(keep):
    """Known answer: the kept rows are those a stable descending sort of the scores puts first
    (ties to the lower row), in row order, per scan of a two-scan batch."""
    g = torch.Generator().manual_seed(0)
    n = 400
    batch = (torch.arange(n) >= 150).int()
    coords = torch.cat([batch[:, None], torch.randperm(n * 4, generator=g)[:n, None].int(),
                        torch.zeros(n, 2, dtype=torch.int32)], 1)  # fmt: skip
    scores = torch.randint(0, 6, (n,), generator=g).float()  # many ties
    x = sc.SparseTensor(scores[:, None], coords)
    got = sc.nn.VoxelPrune(keep_ratio=keep).kept_rows(x, scores)
    want = []
    for b in (0, 1):
        rows = torch.nonzero(batch == b).flatten()
        k = math.ceil(keep * len(rows))
        want.append(rows[torch.sort(-scores[rows], stable=True).indices[:k]])
    assert got.tolist() == torch.sort(torch.cat(want)).values.tolist()


def test_learned_scores_get_gradients_and_inference_is_deterministic():
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25)
    x, _, _ = _points(3000)
    pruned = sc.prune.voxel_prune(net, keep_ratio=0.6, score="learned")
    pruned(_fresh(x)).square().mean().backward()
    scorer = pruned.down[0][0][0].voxel_prune.scorer
    assert scorer.weight.grad is not None and scorer.weight.grad.abs().sum() > 0
    pruned.eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned(_fresh(x)), pruned(_fresh(x)))


@pytest.mark.parametrize("granularity", ["cell", "voxel"])
def test_spvcnn_with_pruned_voxels_labels_every_point(granularity):
    torch.manual_seed(0)
    net = sc.models.SPVCNN(4, 5, width=0.25).eval()
    x, _, points = _points()
    pruned = sc.prune.voxel_prune(net, keep_ratio=0.5, granularity=granularity)
    with torch.no_grad():
        out = pruned(_fresh(x), points, 0.05)
    assert out.shape == (len(points), 5) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(keep_ratio=0.0), r"keep_ratio must be in \(0, 1\]"),
        (dict(keep_ratio=-0.5), r"keep_ratio must be in \(0, 1\]"),
        (dict(keep_ratio=1.5), r"keep_ratio must be in \(0, 1\]"),
        (dict(keep_ratio=None), "exactly one of keep_ratio and threshold"),
        (dict(score="vibes"), "score must be one of"),
        (dict(layers=["classifier"]), "not .* Conv3d layers"),
        (dict(granularity="pixel"), "granularity must be one of"),
        (dict(layers=["stem.0.0"]), "submanifold .* use granularity='voxel'"),
    ],
)
def test_bad_input_leaves_the_model_untouched(kwargs, match):
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25)
    before = copy.deepcopy(net)
    with pytest.raises(ValueError, match=match):
        sc.prune.voxel_prune(net, inplace=True, **kwargs)
    assert not any(hasattr(m, "voxel_prune") for m in net.modules())
    assert str(before) == str(net)


def test_scatter_to_refuses_foreign_voxels():
    full = sc.SparseTensor(torch.ones(2, 1), torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]]).int())
    other = sc.SparseTensor(torch.ones(1, 1), torch.tensor([[0, 5, 0, 0]]).int())
    with pytest.raises(ValueError, match="not in full"):
        sc.nn.scatter_to(other, full)
    part = sc.SparseTensor(torch.full((1, 1), 7.0), torch.tensor([[0, 1, 0, 0]]).int())
    assert sc.nn.scatter_to(part, full).feats[:, 0].tolist() == [0.0, 7.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(keep_ratio=0.5),
        dict(keep_ratio=0.5, granularity="voxel"),
        dict(keep_ratio=0.6, score="learned"),
        dict(keep_ratio=None, threshold=0.5),
    ],
)
def test_saved_and_reloaded_voxel_pruned_models_prune_alike(kwargs, tmp_path):
    """prune.save records each pruning layer's settings (and a learned scorer's weights), so the
    reloaded model drops the same voxels: same voxel counts, same outputs."""
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25).eval()
    x, _, _ = _points()
    pruned = sc.prune.voxel_prune(net, layers=["down.0.0.0", "down.2.0.0"], **kwargs).eval()
    sc.prune.save(pruned, tmp_path / "v.npz")
    loaded = sc.prune.load(tmp_path / "v.npz").eval()
    counts = sc.prune.voxel_counts(pruned, _fresh(x))
    assert sc.prune.voxel_counts(loaded, _fresh(x)) == counts
    assert any(k < n for n, k in counts.values())  # it does prune
    with torch.no_grad():
        torch.testing.assert_close(loaded(_fresh(x)), pruned(_fresh(x)))


def test_a_channel_and_voxel_pruned_model_with_a_learned_score_reloads(tmp_path):
    """The scorer is built on the channel-pruned width; the reloaded model resizes it too."""
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.5).eval()
    x, _, _ = _points()
    thin = sc.prune.channel_prune(net, _fresh(x), ratio=0.5, importance="l2")
    pruned = sc.prune.voxel_prune(thin, keep_ratio=0.6, score="learned").eval()
    assert pruned.down[0][0][0].voxel_prune.scorer.in_features < net.widths[0]
    sc.prune.save(pruned, tmp_path / "cv.npz")
    loaded = sc.prune.load(tmp_path / "cv.npz").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(_fresh(x)), pruned(_fresh(x)))


def test_files_saved_before_cell_granularity_load_as_single_voxel_pruning(tmp_path):
    """A pruned-model file whose voxel settings lack ``granularity`` (written before cells
    existed) prunes single voxels when loaded, as it did when it was saved."""
    import json

    import numpy as np

    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25).eval()
    x, _, _ = _points()
    old = sc.prune.voxel_prune(net, keep_ratio=0.5, granularity="voxel").eval()
    sc.prune.save(old, tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as data:
        arrays = {k: data[k] for k in data.files}
    key = "__sparseconv_meta__"
    meta = json.loads(bytes(arrays[key]).decode())
    for settings in meta["voxel_prune"].values():
        assert settings.pop("granularity") == "voxel"
    arrays[key] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    loaded = sc.prune.load(tmp_path / "old.npz").eval()
    assert loaded.down[0][0][0].voxel_prune.cell is None
    with torch.no_grad():
        torch.testing.assert_close(loaded(_fresh(x)), old(_fresh(x)))


def test_random_scores_are_a_seeded_baseline_that_ignores_the_features():
    x, _, _ = _points(2000)
    other = sc.SparseTensor(torch.randn_like(x.feats), x.coords)
    pruner = sc.nn.VoxelPrune(keep_ratio=0.5, score="random", cell=(2, 2, 2))
    kept = pruner(_fresh(x))
    assert torch.equal(kept.coords, pruner(other).coords)  # the data does not matter
    assert torch.equal(kept.coords, pruner(_fresh(x)).coords)  # deterministic
    magnitude = sc.nn.VoxelPrune(keep_ratio=0.5, cell=(2, 2, 2))(_fresh(x))
    assert not torch.equal(kept.coords, magnitude.coords)


def test_minkunet_goes_back_to_the_full_set_through_the_pruning_record(monkeypatch):
    """Cell pruning's decoder returns by the record's gather: no coordinate lookup, and no
    voxel of the full set is left with zeros from the decoder."""
    from sparseconv.nn import voxel_prune as module

    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25).eval()
    x, _, _ = _points()
    pruned = sc.prune.voxel_prune(net, keep_ratio=0.5)
    seen = []
    real = module.cat_skip

    def checked(y, skip):
        out = real(y, skip)
        seen.append(bool((out.feats[:, : y.feats.shape[1]].abs().sum(1) > 0).all()))
        return out

    def no_lookup(*args, **kwargs):
        raise AssertionError("the decoder looked coordinates up")

    monkeypatch.setattr(module, "row_lookup", no_lookup)
    monkeypatch.setattr(sc.models.minkunet, "cat_skip", checked)
    with torch.no_grad():
        pruned(_fresh(x))
    assert len(seen) == 4 and all(seen)


@pytest.mark.parametrize("case", ["same voxels", "pruned cells", "other subset"])
def test_cat_skip_one_pass_equals_scatter_then_cat(case):
    """The C pass (inference) gives exactly the fill + torch.cat that autograd runs, on the
    skip's own voxels, on a cell-pruned subset (its record's fill) and on any other subset
    (zeros); gradients flow to both inputs through the torch path."""
    from sparseconv.nn.voxel_prune import cat_skip, scatter_to

    torch.manual_seed(0)
    x, _, _ = _points()
    skip = x.replace_feats(torch.randn(x.feats.shape[0], 3))
    if case == "same voxels":
        y = skip.replace_feats(torch.randn(x.feats.shape[0], 5))
    elif case == "pruned cells":
        kept = sc.nn.VoxelPrune(keep_ratio=0.5, cell=(2, 2, 2))(_fresh(skip))
        y = kept.replace_feats(torch.randn(kept.feats.shape[0], 5))
    else:
        rows = torch.arange(0, x.feats.shape[0], 3)
        y = sc.SparseTensor(torch.randn(len(rows), 5), x.coords[rows], x.stride)
    expected = torch.cat([scatter_to(y, skip).feats, skip.feats], 1)
    with torch.no_grad():
        fused = cat_skip(y, skip)
    assert torch.equal(fused.feats, expected)
    assert fused.coords is skip.coords and fused.cache is skip.cache
    leaf_y, leaf_skip = y.feats.clone().requires_grad_(), skip.feats.clone().requires_grad_()
    out = cat_skip(y.replace_feats(leaf_y), skip.replace_feats(leaf_skip))
    assert torch.equal(out.feats.detach(), expected)
    out.feats.sum().backward()
    assert leaf_y.grad is not None and torch.equal(leaf_skip.grad, torch.ones_like(leaf_skip))


def test_gather_concat_refuses_bad_input():
    from sparseconv.kernels import cpu_features

    if not cpu_features.available():
        pytest.skip("no C compiler")
    a, b = torch.randn(4, 2), torch.randn(3, 1)
    with pytest.raises(IndexError, match="outside"):
        cpu_features.gather_concat(a, torch.tensor([0, 4, 1]), b)
    with pytest.raises(ValueError, match="index="):
        cpu_features.gather_concat(a, None, b)
    with pytest.raises(TypeError, match="float32"):
        cpu_features.gather_concat(a.double(), torch.tensor([0, 1, 2]), b)
