"""Each criterion on a case with a known answer."""

import pytest
import torch
from prune_helpers import ChainNet, mse_loss, randomise_norms, run, scene

import sparseconv as sc


def _graph(net, x):
    return sc.prune.DependencyGraph(net, x)


def _class_of(graph, layer, channel):
    return graph.layer_classes["producers"][layer][channel]


def _lowest(graph, scores, layer):
    classes = graph.layer_classes["producers"][layer]
    return int(torch.argmin(scores[classes]))


def test_magnitude_prunes_the_smallest_filter_first():
    x, _ = scene(1500)
    net = ChainNet()
    with torch.no_grad():
        net.a[0].weight[:, :, 5] *= 0.01
    g = _graph(net, x)
    for p in ("l1", "l2", "l3"):
        assert _lowest(g, sc.prune.resolve_importance(p).channel_scores(g), "a.0") == 5
    small = sc.prune.channel_prune(net, x, ratio=1 / 8, importance="l1")
    kept = small.a[0].weight
    torch.testing.assert_close(kept[:, :, 5], net.a[0].weight[:, :, 6])  # channel 5 gone


def test_bn_scale_and_l1_penalty():
    x, _ = scene(1500)
    net = ChainNet()
    with torch.no_grad():
        net.a[1].weight[2] = 0.0
    g = _graph(net, x)
    with pytest.raises(ValueError, match="norm on every prunable channel"):
        sc.prune.BNScale().channel_scores(g)  # conv b has no norm after it
    assert _lowest(g, sc.prune.BNScale(missing="keep").channel_scores(g), "a.0") == 2
    pen = sc.prune.bn_l1_penalty(net, 1e-3)
    assert torch.isclose(pen, 1e-3 * net.a[1].weight.abs().sum())
    small = sc.prune.channel_prune(net, x, ratio=1 / 8, importance="bn_scale", ignore=("b",))
    torch.testing.assert_close(small.a[1].weight[2], net.a[1].weight[3])  # channel 2 gone


def test_apoz_dead_channel_scores_one_and_goes_first():
    x, _ = scene(1500)
    net = randomise_norms(ChainNet())
    with torch.no_grad():
        net.a[1].bias[3] = -100.0  # channel 3 is always zero after the ReLU
    imp = sc.prune.APoZ([x, x])
    g = _graph(net, x)
    scores = imp.channel_scores(g)
    assert imp.apoz[_class_of(g, "a.0", 3)] == 1.0
    assert _lowest(g, scores, "a.0") == 3
    small = sc.prune.channel_prune(net, x, ratio=1 / 8, importance=sc.prune.APoZ([x]))
    assert small.a[0].out_channels == 7
    torch.testing.assert_close(run(small, x), run(net, x), rtol=1e-4, atol=1e-5)  # dead: lossless


def test_reconstruction_picks_the_duplicated_channel_and_refits():
    x, _ = scene(1500)
    net = randomise_norms(ChainNet())
    with torch.no_grad():  # channel 6 duplicates channel 2 exactly
        net.a[0].weight[:, :, 6] = net.a[0].weight[:, :, 2]
        for t in (net.a[1].weight, net.a[1].bias, net.a[1].running_mean, net.a[1].running_var):
            t[6] = t[2]
    g = _graph(net, x)
    scores = sc.prune.Reconstruction([x]).channel_scores(g)
    assert _lowest(g, scores, "a.0") in (2, 6)
    ref = run(net, x)
    small = sc.prune.channel_prune(net, x, ratio=1 / 8, importance=sc.prune.Reconstruction([x]))
    assert small.a[0].out_channels == 7
    torch.testing.assert_close(run(small, x), ref, rtol=1e-3, atol=1e-4)  # refit: exact again
    plain = sc.prune.channel_prune(
        net, x, ratio=1 / 8, importance=sc.prune.Reconstruction([x]), refit=False
    )
    assert (run(plain, x) - ref).abs().max() > 1e-3


def test_hessian_fisher_accumulates_squared_batch_gradients():
    xs = [scene(1200, seed=s)[0] for s in range(3)]
    net = ChainNet()
    h = sc.prune.Hessian(mse_loss, xs)
    h.accumulate(net, xs[0])
    one = {k: v.clone() for k, v in h.stats.items()}
    h.accumulate(net, xs[1])
    h.accumulate(net, xs[2])
    grads = []
    for xb in xs:
        net.zero_grad()
        mse_loss(net, xb).backward()
        grads.append(net.b.weight.grad.clone())
    torch.testing.assert_close(h.stats["b"], sum(gr.square() for gr in grads))
    assert (h.stats["b"] >= one["b"]).all() and (h.stats["b"] > one["b"]).any()
    assert not torch.allclose(h.stats["b"], sum(grads).square())
    assert h.n_batches == 3
    w = sc.prune.Hessian(mse_loss, xs).weight_scores(net)["b"]
    torch.testing.assert_close(w, 0.5 * h.stats["b"] / 3 * net.b.weight.detach().square())


def test_taylor_and_snip_zero_filter_scores_zero():
    x, _ = scene(1500)
    net = ChainNet()
    with torch.no_grad():
        net.a[0].weight[:, :, 4] = 0.0
    g = _graph(net, x)
    t = sc.prune.Taylor(mse_loss, [x]).channel_scores(g)
    assert t[_class_of(g, "a.0", 4)] == 0 and _lowest(g, t, "a.0") == 4
    snip = sc.prune.SNIP(mse_loss, [x]).weight_scores(net)
    assert snip["a.0"][:, :, 4].sum() == 0
    assert torch.isclose(
        sum(s.sum() for s in snip.values()), torch.tensor(1.0, dtype=snip["a.0"].dtype)
    )
    sc.prune.fine_grained_prune(net, 0.5, importance=sc.prune.SNIP(mse_loss, [x]))
    assert (net.a[0].weight[:, :, 4] == 0).all()


def test_random_is_seeded_and_uniform_keeps_the_first_channels():
    x, _ = scene(1500)
    net = ChainNet()
    g = _graph(net, x)
    r = sc.prune.Random(3)
    assert torch.equal(r.channel_scores(g), sc.prune.Random(3).channel_scores(g))
    small = sc.prune.channel_prune(net, x, ratio=0.5, importance="uniform")
    torch.testing.assert_close(small.a[0].weight, net.a[0].weight[:, :, :4])
