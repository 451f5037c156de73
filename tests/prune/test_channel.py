"""Channel pruning: graph groups, lossless removal, save/load, ratios, bad input."""

import pytest
import torch
from prune_helpers import SkipNet, randomise_norms, run, scene

import sparseconv as sc
from sparseconv.models import SPVCNN, MinkUNet


def _models():
    x, points = scene()
    return [
        ("minkunet", lambda: MinkUNet(4, 5, width=0.25), x),
        ("spvcnn", lambda: SPVCNN(4, 5, width=0.25), (x, points, 0.25)),
        ("user", lambda: SkipNet(), x),
    ]


@pytest.mark.parametrize("name, build, example", _models(), ids=[m[0] for m in _models()])
def test_zeroed_channels_remove_losslessly_and_reload(name, build, example, tmp_path):
    torch.manual_seed(0)
    model = randomise_norms(build())
    graph = sc.prune.DependencyGraph(model, example)
    groups = graph.prunable_groups()
    assert groups, str(graph)
    g = torch.Generator().manual_seed(1)
    chosen = set()
    for grp in groups:
        pick = torch.randperm(len(grp), generator=g)[: len(grp) // 2].tolist()
        chosen.update(grp.classes[i] for i in pick)
    before_params = sum(p.numel() for p in model.parameters())
    sc.prune.zero_channels(graph, chosen)
    with torch.no_grad():
        ref = run(model, example)
        sc.prune.remove_channels(graph, chosen)
        out = run(model, example)
    assert sum(p.numel() for p in model.parameters()) < 0.5 * before_params
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    sc.prune.save(model, tmp_path / "m.npz")
    again = sc.prune.load(tmp_path / "m.npz", model=None if name != "user" else SkipNet()).eval()
    with torch.no_grad():
        torch.testing.assert_close(run(again, example), out)


def test_graph_couples_residual_concat_and_point_branch():
    x, points = scene()
    g = sc.prune.DependencyGraph(SkipNet(), x)
    producers = {p for grp in g.groups for p in grp.producers}
    coupled = [grp.producers for grp in g.groups if len(grp.producers) > 1]
    assert ("res.0", "stem.0") in coupled  # residual add couples the two convs
    # the concat skip: the stem/res channels feed mix.0 at offset 16 after up's 16 channels
    mix_in = g.layer_classes["consumers"]["mix.0"]
    stem_out = g.layer_classes["producers"]["stem.0"]
    assert mix_in[16:] == stem_out
    assert (
        "head" in producers and not [grp for grp in g.groups if "head" in grp.producers][0].prunable
    )
    spv = sc.prune.DependencyGraph(SPVCNN(4, 5, width=0.25), (x, points, 0.25))
    mlp_groups = [grp.producers for grp in spv.groups if "point_mlps.0.0" in grp.producers]
    assert mlp_groups and any(p.startswith("down.3") for p in mlp_groups[0])
    assert "group" in str(spv)


def test_channel_prune_ratio_round_to_and_original_untouched():
    x, _ = scene()
    net = MinkUNet(4, 5, width=0.25)
    before = [p.shape for p in net.parameters()]
    small = sc.prune.channel_prune(net, x, ratio=0.5, importance="l1", round_to=4)
    assert [p.shape for p in net.parameters()] == before
    convs = [m for m in small.modules() if isinstance(m, sc.nn.Conv3d)]
    assert all(m.out_channels % 4 == 0 for m in convs if m.out_channels != 5)
    assert small.stem[0][0].out_channels == 4  # 8 * 0.5
    assert small(x).shape == (len(x), 5)
    glob = sc.prune.channel_prune(net, x, ratio=0.5, global_ranking=True, min_width=2)
    total = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert total(glob) < 0.5 * total(net)


def test_ignore_and_per_layer_ratios():
    x, _ = scene()
    net = SkipNet()
    small = sc.prune.channel_prune(net, x, ratio=0.5, ignore=("down",), ratios={"mix": 0.25})
    assert small.down[0].out_channels == 32 and small.mix[0].out_channels == 12
    assert small.stem[0].out_channels == 8


def test_bad_input_is_rejected_and_nothing_half_pruned():
    x, _ = scene()
    net = SkipNet()
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            sc.prune.channel_prune(net, x, ratio=bad)
    wrong = x.replace_feats(torch.zeros(len(x), 7))
    with pytest.raises(ValueError, match="example_input"):
        sc.prune.channel_prune(net, wrong, ratio=0.5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="min_width"):
        sc.prune.channel_prune(net, x, ratio=0.9, min_width=4, inplace=True)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="importance"):
        sc.prune.channel_prune(net, x, importance="nonsense")
