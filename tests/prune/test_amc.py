"""AMC's DDPG search on a known answer: one group is cheap to prune, two are costly; at the same
MAC budget the agent must beat uniform ratios and match or beat a sensitivity-based choice."""

import pytest
import torch

import sparseconv as sc


def _scan():
    g = torch.Generator().manual_seed(0)
    xyz = torch.unique(torch.randint(0, 8, (300, 3), generator=g), dim=0)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int()
    return sc.SparseTensor(torch.randn(len(coords), 4, generator=g), coords)


def _net():
    torch.manual_seed(0)
    return sc.nn.Sequential(
        sc.nn.Conv3d(4, 16, 3), sc.nn.BatchNorm(16), sc.nn.ReLU(),
        sc.nn.Conv3d(16, 16, 3), sc.nn.BatchNorm(16), sc.nn.ReLU(),
        sc.nn.Conv3d(16, 16, 3), sc.nn.BatchNorm(16), sc.nn.ReLU(),
        sc.nn.Conv3d(16, 3, 1),
    )  # fmt: skip


COST = {"0": 100.0, "3": 1.0, "6": 100.0}  # group 3 is nearly free to prune


def _evaluate(model) -> float:
    """Known answer: minus the weighted squared fraction of each group's channels removed."""
    widths = {"0": model[0].out_channels, "3": model[3].out_channels, "6": model[6].out_channels}
    return -sum(COST[n] * (1 - w / 16) ** 2 for n, w in widths.items())


def test_amc_beats_uniform_and_sensitivity_at_the_same_budget():
    net, x = _net(), _scan()
    result = sc.prune.amc_search(net, x, _evaluate, budget=0.6, episodes=60, warmup=15,
                                 progress=False)  # fmt: skip
    budget_macs = sc.prune.count_macs(net, x)["total"]
    amc = sc.prune.channel_prune(net, x, 0.0, ratios=result.ratios)
    assert sc.prune.count_macs(amc, x)["total"] <= 0.75 * budget_macs  # on budget (approx.)
    assert max(result.ratios, key=result.ratios.get) == "3"  # the cheap group is cut most
    macs_amc = sc.prune.count_macs(amc, x)["total"]
    uniform = None
    for r in [i / 20 for i in range(1, 19)]:  # the smallest uniform ratio with as few MACs
        candidate = sc.prune.channel_prune(net, x, r, ignore=("9",))
        if sc.prune.count_macs(candidate, x)["total"] <= macs_amc:
            uniform = candidate
            break
    assert uniform is not None
    assert _evaluate(amc) > _evaluate(uniform)
    sensitivity = sc.prune.sensitivity_scan(net, x, _evaluate, progress=False)
    picked = None
    for drop in (1, 5, 10, 20, 40, 80, 160):  # loosest drop that still fits the budget
        ratios = sensitivity.pick(drop)
        model = sc.prune.channel_prune(net, x, 0.0, ratios=ratios)
        if sc.prune.count_macs(model, x)["total"] <= macs_amc:
            picked = model
            break
    if picked is not None:
        assert _evaluate(amc) >= _evaluate(picked) - 1.0
    assert len(result.history) == 60 and result.reward == max(r for _, r in result.history)
    # NetAdapt on the same budget, with MACs as its "latency"
    adapted, _ = sc.prune.netadapt(net, x, _evaluate, lambda m: sc.prune.count_macs(m, x)["total"],
                                   target=macs_amc / budget_macs + 1e-6, progress=False)  # fmt: skip
    assert sc.prune.count_macs(adapted, x)["total"] <= macs_amc + 1
    assert _evaluate(amc) >= _evaluate(adapted) - 1.0


def test_amc_under_a_latency_budget():
    """A 'latency' that only group 3 affects: AMC must put the cut there."""
    net, x = _net(), _scan()

    def latency(model) -> float:
        return 1.0 + model[3].out_channels / 16

    result = sc.prune.amc_search(net, x, _evaluate, budget=0.8, episodes=30, warmup=10,
                                 latency=latency, progress=False)  # fmt: skip
    assert result.cost_ratio <= 0.85
    assert max(result.ratios, key=result.ratios.get) == "3"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [(dict(budget=1.0), "budget"), (dict(budget=0.0), "budget"), (dict(max_ratio=1.0), "max_ratio"),
     (dict(episodes=0), "episodes")],
)  # fmt: skip
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sc.prune.amc_search(_net(), _scan(), _evaluate, progress=False, **kwargs)
