"""Known answers for the classic methods: FPGM, GraSP, soft filter pruning, group LASSO, L0 gates."""

import math

import pytest
import torch
from torch import nn

import sparseconv as sc
from sparseconv.prune.graph import DependencyGraph
from sparseconv.prune.regularizers import BETA, GAMMA, ZETA, gate_values


def _scan(n=400, extent=10, seed=0, c=4) -> sc.SparseTensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.unique(torch.randint(0, extent, (n, 3), generator=g), dim=0)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int()
    return sc.SparseTensor(torch.randn(len(coords), c, generator=g), coords)


def _net() -> sc.nn.Sequential:
    torch.manual_seed(0)
    return sc.nn.Sequential(
        sc.nn.Conv3d(4, 4, 1), sc.nn.BatchNorm(4), sc.nn.ReLU(),
        sc.nn.Conv3d(4, 6, 3), sc.nn.BatchNorm(6), sc.nn.ReLU(),
        sc.nn.Conv3d(6, 3, 1),
    )  # fmt: skip


def _first_group(graph):
    return next(g for g in graph.prunable_groups() if g.producers == ("0",))


def test_fpgm_removes_the_filter_nearest_the_geometric_median_not_the_smallest():
    net = _net()
    v = torch.tensor([1.0, 0.0, 0.0, 0.0])
    with torch.no_grad():  # filters 0, 1, 2 and 10 times v: distance sums 13, 11, 11, 27
        net[0].weight.copy_(torch.stack([0 * v, 1 * v, 2 * v, 10 * v], 1)[None])
    graph = DependencyGraph(net, _scan())
    group = _first_group(graph)
    scores = sc.prune.FPGM().channel_scores(graph)[group.classes]
    torch.testing.assert_close(scores, torch.tensor([13.0, 11.0, 11.0, 27.0], dtype=torch.float64))
    small = sc.prune.channel_prune(net, _scan(), 0.25, "fpgm", ignore=("3",))
    kept = small[0].weight[0, 0]  # first input row of the kept filters
    assert kept.tolist() == [0.0, 2.0, 10.0]  # filter 1 went; L2 would have removed filter 0
    by_norm = sc.prune.channel_prune(net, _scan(), 0.25, "l2", ignore=("3",))
    assert by_norm[0].weight[0, 0].tolist() == [1.0, 2.0, 10.0]


def test_grasp_scores_are_w_times_hessian_gradient():
    """0.5 ||X w - y||^2: g = X^T (X w - y), H = X^T X, score = w * (H g)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 1, bias=False))
    x, y = torch.randn(8, 3), torch.randn(8, 1)

    def loss_fn(m, batch):
        return 0.5 * ((m(batch[0]) - batch[1]) ** 2).sum()

    scores = sc.prune.GraSP(loss_fn, [(x, y)]).weight_scores(model)["0"]
    w = model[0].weight.detach()[0]
    g = x.T @ (x @ w - y[:, 0])
    torch.testing.assert_close(scores[0], w * (x.T @ x @ g), rtol=1e-5, atol=1e-6)


def test_soft_filter_pruning_zeroes_lets_filters_recover_then_removes():
    net = _net()
    x = _scan()
    pruner = sc.prune.SoftFilterPruner(net, x, ratio=0.5)
    chosen = pruner.step()
    graph = DependencyGraph(net, x)
    group = _first_group(graph)
    zeroed = [i for i, c in enumerate(group.classes) if c in chosen]
    assert len(zeroed) == 2
    assert float(net[0].weight[:, :, zeroed].abs().sum()) == 0.0
    with torch.no_grad():
        net[1].bias.fill_(0.1)  # a live norm after the zero filters (ReLU passes its gradient)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(sc.SparseTensor(x.feats, x.coords)).feats.square().mean().backward()
    opt.step()
    assert float(net[0].weight.detach()[:, :, zeroed].abs().sum()) > 0  # soft: they keep training
    small = pruner.finalize()
    assert small[0].out_channels == 2 and small[3].out_channels == 3
    assert small(sc.SparseTensor(x.feats, x.coords)).feats.shape == (len(x.coords), 3)


def test_group_lasso_penalty_sums_filter_norms():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), sc.nn.Conv3d(2, 2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))  # rows are filters: 5, 0
        model[1].weight.copy_(torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]))  # Cout columns: 1, 2
    penalty = sc.prune.group_lasso_penalty(model, 0.5)
    assert float(penalty) == pytest.approx(0.5 * (5 + 0 + 1 + 2))
    penalty.backward()  # a zero group has a subgradient 0 (no NaN)
    assert torch.isfinite(model[0].weight.grad).all()
    with pytest.raises(ValueError, match="strength must be >= 0"):
        sc.prune.group_lasso_penalty(model, -1.0)


def test_l0_gates_penalty_and_lossless_removal_of_closed_gates():
    net = _net().eval()
    x = _scan()
    names = sc.prune.add_l0_gates(net, init_keep=0.9)
    assert names == ["1", "4"]
    with torch.no_grad():
        net[4].l0_log_alpha.copy_(torch.tensor([8.0, -8.0, 8.0, -8.0, 8.0, 0.0]))
    z = gate_values(net[4], training=False)
    assert z.tolist()[:5] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert float(z[5]) == pytest.approx(0.5 * (ZETA - GAMMA) + GAMMA)
    shift = BETA * math.log(-GAMMA / ZETA)
    expected = sum(torch.sigmoid(m.l0_log_alpha - shift).sum() for m in (net[1], net[4]))
    assert float(sc.prune.l0_penalty(net, 2.0)) == pytest.approx(2 * float(expected))
    net.train()
    sampled = gate_values(net[4])
    assert ((sampled >= 0) & (sampled <= 1)).all()
    net.eval()
    with torch.no_grad():
        want = net(sc.SparseTensor(x.feats, x.coords)).feats
    small, removed = sc.prune.prune_closed_gates(net, x)
    assert removed == 2 and small[3].out_channels == 4 and not hasattr(small[4], "l0_log_alpha")
    with torch.no_grad():
        got = small(sc.SparseTensor(x.feats, x.coords)).feats
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no L0 gates"):
        sc.prune.l0_penalty(small, 1.0)
