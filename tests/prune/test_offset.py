"""Kernel-offset pruning: lossless removal, filtered maps, presets, scopes, saving, bad input."""

import copy

import pytest
import torch

import sparseconv as sc
from sparseconv.prune.offset import centre_index, prunable_offset_layers


def _scan(n=3000, extent=30, seed=0) -> sc.SparseTensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.unique(torch.randint(0, extent, (n, 3), generator=g), dim=0)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int()
    return sc.SparseTensor(torch.randn(len(coords), 4, generator=g), coords)


def _fresh(x: sc.SparseTensor) -> sc.SparseTensor:
    return sc.SparseTensor(x.feats, x.coords)


class UserNet(torch.nn.Module):
    """Not one of sparseconv's models: a k5 stem, a dilated k3, a strided k3 with padding."""

    def __init__(self) -> None:
        super().__init__()
        self.a = sc.nn.Conv3d(4, 8, 5)
        self.b = sc.nn.Conv3d(8, 8, 3, dilation=2)
        self.c = sc.nn.Conv3d(8, 6, 3, stride=2, padding=1, downsample_mode="spconv")
        self.d = sc.nn.Conv3d(6, 8, 3, stride=2, padding=1, downsample_mode="spconv",
                              transposed=True)  # fmt: skip

    def forward(self, x):
        return self.d(self.c(self.b(self.a(x)))).feats


def _lossless(model, example, **kwargs):
    model.eval()
    pruned, report = sc.prune.offset_prune(model, example, **kwargs)
    zeroed = copy.deepcopy(model)
    sc.prune.zero_offsets(zeroed, report.kept)
    with torch.no_grad():
        want = sc.prune.tracing.call_model(zeroed, _copy(example))
        got = sc.prune.tracing.call_model(pruned, _copy(example))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    return pruned, report


def _copy(example):
    if isinstance(example, tuple):
        return (_fresh(example[0]), *example[1:])
    return _fresh(example)


@pytest.mark.parametrize("importance", ["norm", "work", "efficiency", "random"])
def test_removing_zeroed_offsets_is_lossless_on_minkunet(importance):
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25)
    x = _scan()
    pruned, report = _lossless(net, x, ratio=1 / 3, importance=importance)
    for name, layer in prunable_offset_layers(pruned).items():
        # at least a third of the 26 non-centre offsets, in mirror pairs: 5 pairs
        assert len(layer.offsets()) == 27 - 10, name
        assert all(26 - k in layer.offsets() for k in layer.offsets()), name
        assert centre_index(layer.kernel_size) in layer.offsets()
        assert layer.weight.shape[0] == len(layer.offsets())
    assert 0.5 < report.pair_ratio < 0.9


def test_lossless_on_spvcnn_and_a_user_network():
    torch.manual_seed(0)
    points = torch.rand(4000, 3) * 2
    x, _ = sc.voxelize(points, 0.05, torch.randn(4000, 4))
    example = (x, torch.cat([torch.zeros(4000, 1), points], 1), 0.05)
    _lossless(sc.models.SPVCNN(4, 5, width=0.25), example, ratio=0.5, importance="norm")
    _, report = _lossless(UserNet(), _scan(extent=20), ratio=0.4, scope="global")
    assert set(report.kept) == {"a", "b", "c", "d"}


def test_the_filtered_map_has_exactly_the_kept_offsets_pairs():
    torch.manual_seed(0)
    layer = sc.nn.Conv3d(4, 4, 3)
    x = _scan(extent=16)
    full = layer.kernel_map(x)
    layer.keep_offsets([0, 4, 13, 22, 26])
    kept = layer.kernel_map(_fresh(x))
    # mirror-symmetric: built for its 5 offsets, the centre (the identity) in the middle
    assert kept.kernel_volume == 5 and kept.submanifold
    assert torch.equal(kept.nbmap, full.nbmap[:, [0, 4, 13, 22, 26]])
    for i, k in enumerate([0, 4, 13, 22, 26]):
        assert torch.equal(torch.stack(kept.pairs(i)), torch.stack(full.pairs(k)))
    y = layer(_fresh(x))  # every dataflow through the same filtered map
    for flow in ("torch", "cpu_implicit_gemm"):
        if flow in sc.functional.DATAFLOWS and not sc.functional.DATAFLOWS[flow].unsupported(
            x.feats
        ):
            z = sc.functional.conv3d(_fresh(x), layer.weight, kernel_size=3, dataflow=flow,
                                     offsets=layer.offsets())  # fmt: skip
            torch.testing.assert_close(z.feats, y.feats, rtol=1e-5, atol=1e-6)


def test_patterns_and_global_scope():
    assert sc.prune.pattern_offsets((3, 3, 3), "cross") == [4, 10, 12, 13, 14, 16, 22]
    assert len(sc.prune.pattern_offsets((3, 3, 3), "shell19")) == 19
    assert sc.prune.pattern_offsets((5, 5, 5), "cross")[3] == 62  # a k5 centre: row 62
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25)
    pruned, _ = sc.prune.offset_prune(net, _scan(), pattern="cross")
    assert all(len(m.offsets()) == 7 for m in prunable_offset_layers(pruned).values())
    pruned, report = sc.prune.offset_prune(net, _scan(), ratio=0.5, scope="global",
                                           share_maps=False)  # fmt: skip
    removed = sum(report.volume[n] - len(k) for n, k in report.kept.items())
    assert 0 <= removed - 0.5 * 26 * len(report.kept) < 2  # whole mirror pairs
    assert len({len(k) for k in report.kept.values()}) > 1  # layers pruned differently
    _, single = sc.prune.offset_prune(net, _scan(), ratio=1 / 3, symmetric=False)
    assert {len(k) for k in single.kept.values()} == {27 - round(26 / 3)}  # 9 single offsets


def test_taylor_importance_and_a_second_prune():
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25)
    x = _scan()
    labels = torch.randint(0, 5, (len(x.coords),))

    def loss_fn(model, batch):
        return torch.nn.functional.cross_entropy(model(_fresh(batch)), labels)

    once, _ = sc.prune.offset_prune(net, x, 0.25, "taylor", batches=[x], loss_fn=loss_fn)
    twice, report = sc.prune.offset_prune(once, _scan(), 0.25, "norm")
    layer = twice.stem[0][0]
    assert len(layer.offsets()) < len(once.stem[0][0].offsets()) < 27
    assert set(layer.offsets()) <= set(once.stem[0][0].offsets())


def test_saved_and_reloaded_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25).eval()
    pruned, _ = sc.prune.offset_prune(net, _scan(), ratio=1 / 3)
    sc.prune.save(pruned, tmp_path / "p.npz")
    again = sc.prune.load(tmp_path / "p.npz").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(_scan()), pruned(_scan()))
    assert "offsets=17/27" in repr(again.stem[0][0])


def test_a_compiled_offset_pruned_network_equals_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25).eval()
    pruned, _ = sc.prune.offset_prune(net, _scan(), ratio=1 / 3)
    compiled = torch.compile(pruned, dynamic=True, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(_scan(seed=3)), pruned(_scan(seed=3)))
    torch._dynamo.reset()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(ratio=1.0), r"ratio must be in \[0, 1\)"),
        (dict(ratio=-0.1), r"ratio must be in \[0, 1\)"),
        (dict(importance="fame"), "importance must be one of"),
        (dict(importance="taylor"), "needs batches and loss_fn"),
        (dict(scope="world"), "scope must be"),
        (dict(layers=["nope"]), r"layers \['nope'\] are not prunable"),
        (dict(pattern="star"), "pattern must be one of"),
        (dict(strides=[3]), r"no prunable conv runs at tensor strides \[\(3, 3, 3\)\]"),
        (dict(strides=[]), "strides must name at least one"),
        (dict(strides=[0]), "strides must be"),
    ],
)
def test_bad_input_leaves_the_model_untouched(kwargs, match):
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25)
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match=match):
        sc.prune.offset_prune(net, _scan(), inplace=True, **kwargs)
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_bad_offset_lists():
    layer = sc.nn.Conv3d(4, 4, 3)
    with pytest.raises(ValueError, match="distinct indices below 27"):
        layer.keep_offsets([0, 27])
    with pytest.raises(ValueError, match="distinct indices below 27"):
        layer.keep_offsets([])
    layer.keep_offsets([1, 13])
    with pytest.raises(ValueError, match="removed already"):
        layer.keep_offsets([0, 13])
    with pytest.raises(ValueError, match="2 kernel offsets but the kernel .* has 3"):
        sc.functional.conv3d(_scan(extent=8), layer.weight, kernel_size=3, offsets=(1, 13, 14))
    with pytest.raises(ValueError, match="offsets must be a non-empty list"):
        sc.functional.conv3d(_scan(extent=8), layer.weight, kernel_size=3, offsets=(1, 40))
    with pytest.raises(ValueError, match="no conv with a centre offset"):
        sc.prune.offset_prune(sc.nn.Sequential(sc.nn.Conv3d(4, 4, 2, stride=2)), _scan(), 0.3)


def test_strides_prune_only_the_convs_at_those_tensor_strides():
    """``strides=(1,)`` prunes the full-resolution k3 convs (stem and last decoder stage of a
    MinkUNet) and nothing else, losslessly; several strides add up."""
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25)
    pruned, report = _lossless(net, _scan(), ratio=1 / 3, strides=(1,))
    want = {n for n in prunable_offset_layers(net) if n.startswith(("stem.", "fuse.3."))}
    assert set(report.kept) == want and len(want) == 6
    untouched = [m for n, m in pruned.named_modules() if n in prunable_offset_layers(net)
                 and n not in want]  # fmt: skip
    assert untouched and all(m.kept_offsets is None for m in untouched)
    _, both = sc.prune.offset_prune(net, _scan(), 1 / 3, strides=[1, (2, 2, 2)])
    assert set(both.kept) == want | {n for n in prunable_offset_layers(net)
                                     if n.startswith(("down.0.", "fuse.2."))}  # fmt: skip


def test_layers_on_one_map_share_a_subset_unless_asked_not_to():
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25)
    x = _scan()
    _, shared = sc.prune.offset_prune(net, x, ratio=1 / 3)
    _, own = sc.prune.offset_prune(net, _scan(), ratio=1 / 3, share_maps=False)
    stage = [n for n in shared.kept if n.startswith("down.0.")]  # every k3 conv at stride 2
    assert len(stage) >= 4
    assert len({tuple(shared.kept[n]) for n in stage}) == 1
    assert len({tuple(own.kept[n]) for n in stage}) > 1  # each chose its own, one shared map


def test_a_mirror_symmetric_subset_map_is_built_for_its_offsets_alone():
    """The kept offsets' map built directly (half searched, mirrored) equals the full map
    restricted to them, pair for pair; an asymmetric subset is restricted from the full map."""
    from sparseconv.maps import build

    x = _scan(extent=14)
    kept = tuple(sorted({0, 26, 4, 22, 10, 16, 13}))
    searched = []
    original = build._native_map
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "_native_map", lambda *a, **k: searched.append(len(a[4])) or
                      original(*a, **k))  # fmt: skip
        direct = build.build_kernel_map(x.coords, 3, kept_offsets=kept)
    assert searched == [len(kept)] and direct.submanifold  # no full 27-offset search
    full = build.build_kernel_map(x.coords, 3)
    restricted = full.select_offsets(kept)
    assert torch.equal(direct.nbmap, restricted.nbmap)
    assert direct.offsets == restricted.offsets
    for k in range(len(kept)):
        for a, b in zip(direct.pairs(k), restricted.pairs(k)):
            assert torch.equal(a, b)
    lopsided = build.build_kernel_map(x.coords, 3, kept_offsets=(0, 13))
    assert torch.equal(lopsided.nbmap, full.nbmap[:, [0, 13]])
    with pytest.raises(ValueError, match="distinct indices below 27"):
        build.build_kernel_map(x.coords, 3, kept_offsets=(13, 27))
    with pytest.raises(ValueError, match="padding"):  # checked as for the full map
        build.build_kernel_map(x.coords, 3, padding=1, kept_offsets=kept)


def test_work_and_efficiency_rank_equal_weights_by_their_pairs():
    """Known answer: with every offset's weight of equal norm, ``work`` removes the offsets with
    the fewest pairs and ``efficiency`` (norm per sqrt(pairs)) those with the most."""
    torch.manual_seed(0)
    net = sc.nn.Sequential(sc.nn.Conv3d(4, 4, 3))
    with torch.no_grad():
        net[0].weight.fill_(0.5)
    # a flat 2-D sheet: in-plane offsets have many pairs, the others none
    xy = torch.stack(torch.meshgrid(torch.arange(12), torch.arange(12), indexing="ij"), -1)
    coords = torch.cat([torch.zeros(144, 1, dtype=torch.long), xy.reshape(-1, 2),
                        torch.zeros(144, 1, dtype=torch.long)], 1).int()  # fmt: skip
    x = sc.SparseTensor(torch.randn(144, 4), coords)
    pairs = (net[0].kernel_map(x).nbmap >= 0).sum(0)
    in_plane = {k for k in range(27) if pairs[k] > 0 and k != 13}  # dz = 0: 8 offsets
    _, work = sc.prune.offset_prune(net, x, ratio=8 / 26, importance="work", symmetric=False)
    _, eff = sc.prune.offset_prune(net, x, ratio=8 / 26, importance="efficiency", symmetric=False)
    assert not in_plane & (set(range(27)) - set(work.kept["0"]))  # work keeps the busy ones
    assert set(range(27)) - set(eff.kept["0"]) == in_plane  # efficiency removes exactly them


def test_the_random_baseline_is_reproducible_and_unlike_a_ranking():
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25)
    x = _scan()
    _, first = sc.prune.offset_prune(net, x, ratio=1 / 3, importance="random")
    _, again = sc.prune.offset_prune(net, x, ratio=1 / 3, importance="random")
    _, norm = sc.prune.offset_prune(net, x, ratio=1 / 3, importance="norm")
    assert first.kept == again.kept
    assert first.kept != norm.kept
    assert all(len(k) == 17 for k in first.kept.values())
