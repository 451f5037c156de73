"""Schedules and ratio search: cubic sparsity, gradual pruning, lottery rewinding, iterative
channel pruning, sensitivity scan, NetAdapt, MACs."""

import pytest
import torch
from prune_helpers import ChainNet, SkipNet, mse_loss, run, scene

import sparseconv as sc


def test_cubic_schedule_shape():
    s = [sc.prune.cubic_sparsity(t, 10, 110, 0.8) for t in range(0, 130, 10)]
    assert s[0] == s[1] == 0.0 and s[-1] == s[-2] == pytest.approx(0.8)
    steps = [b - a for a, b in zip(s[1:], s[2:-1])]
    assert all(d > 0 for d in steps) and steps == sorted(steps, reverse=True)  # fast, then slow
    with pytest.raises(ValueError, match=r"end \(5\) must be after begin \(10\)"):
        sc.prune.cubic_sparsity(0, 10, 5, 0.5)


def test_gradual_pruner_sparsity_only_grows_and_survives_training():
    x, _ = scene(1200)
    net = ChainNet()
    pruner = sc.prune.GradualPruner(net, 0.75, begin=0, end=6, frequency=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    seen = []
    for step in range(8):
        opt.zero_grad()
        mse_loss(net, x).backward()
        opt.step()
        if pruner.step(step) is not None:
            seen.append(float((net.b.weight == 0).float().mean()))
    assert seen == sorted(seen) and seen[-1] == pytest.approx(0.75, abs=0.01)


def test_lottery_ticket_rewinds_to_step_k_under_the_trained_mask():
    x, _ = scene(1200)
    net = ChainNet()
    ticket = sc.prune.LotteryTicket(net, rewind_step=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for step in range(5):
        ticket.observe(step)
        opt.zero_grad()
        mse_loss(net, x).backward()
        opt.step()
    trained = net.b.weight.detach().clone()
    ticket.prune_and_rewind(0.5)
    mask = net.b.weight_mask
    assert 0.3 < mask.float().mean() < 0.7  # global scope: about half of b's weights kept
    torch.testing.assert_close(net.b.weight, ticket.snapshot["b.weight"] * mask)
    assert not torch.equal(ticket.snapshot["b.weight"], trained)


def test_iterative_channel_prune_calls_finetune_each_round():
    x, _ = scene(1200)
    rounds = []
    small = sc.prune.iterative_channel_prune(
        SkipNet(), x, 0.5, steps=2, finetune=lambda m: rounds.append(m)
    )
    assert len(rounds) == 2 and small.mix[0].out_channels < 16
    assert run(small, x).shape == (len(x), 3)


def test_sensitivity_scan_pick_and_plot(tmp_path):
    x, _ = scene(1200)
    net = SkipNet()

    def metric(m):  # a stand-in metric: fraction of stem channels kept
        return m.stem[0].out_channels / 16

    sens = sc.prune.sensitivity_scan(net, x, metric, ratios=(0.25, 0.5, 0.75), progress=False)
    assert sens.baseline == 1.0
    assert sens.curves["res.0"] == [0.75, 0.5, 0.25]  # res.0 and stem.0 are one group
    assert sens.curves["mix.0"] == [1.0, 1.0, 1.0]
    picked = sens.pick(max_drop=0.3)
    assert picked["res.0"] == 0.25 and picked["mix.0"] == 0.75
    assert sens.plot(tmp_path / "s.png").stat().st_size > 1000


def test_netadapt_reaches_the_latency_target_and_macs_drop():
    x, _ = scene(1200)
    net = SkipNet()
    macs = lambda m: sc.prune.count_macs(m, x)["total"]  # noqa: E731  (a deterministic "latency")
    small, history = sc.prune.netadapt(
        net, x, lambda m: -macs(m), macs, target=0.6, step_cut=0.2, progress=False
    )
    assert macs(small) <= 0.6 * macs(net) and history
    assert all(h.latency <= macs(net) for h in history)
    counts = sc.prune.count_macs(net, x)
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert counts["head"] == len(x) * 16 * 3
