"""AMC (He et al. 2018): per-layer channel ratios chosen by a DDPG agent under a MAC budget or
a measured-latency budget.

The agent walks the prunable groups in network order. Its state for group ``t`` is AMC's layer
embedding: ``(t / T, Cin, Cout, kernel volume, the group's share of the MACs, MACs already
removed, MACs still to remove, the previous action)``, normalised to [0, 1]. Its action is the
ratio of channels to remove, in ``[0, max_ratio]``; as in AMC the action is clipped so that the
budget stays reachable with the layers left, which makes every episode end (about) on budget. The
reward of an episode is ``evaluate(pruned)`` (higher is better) and is given to every step of
the episode, centred on the mean of the last 50 episodes and scaled by their spread (AMC's
variance reduction). Exploration
is a truncated normal around the actor's action whose width decays per episode.

The result is a ``ratios`` dict for :func:`~sparseconv.prune.channel_prune` and the history;
compare it with uniform ratios, a sensitivity-based choice and NetAdapt at the same budget
(``sensitivity_scan``, ``netadapt``), as ``tests/prune/test_amc.py`` does on a known answer.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from sparseconv.prune.channel import channel_prune
from sparseconv.prune.cost import count_macs
from sparseconv.prune.graph import DependencyGraph
from sparseconv.utils.progress import progress_bar

STATE = 8


@dataclass
class AMCResult:
    ratios: dict[str, float]
    reward: float
    macs_ratio: float
    cost_ratio: float  # of the budgeted cost: MACs, or the measured latency
    history: list[tuple[dict[str, float], float]] = field(default_factory=list)


class _Agent:
    """DDPG: actor and critic MLPs with target copies, a replay buffer, soft updates."""

    def __init__(self, max_ratio: float, seed: int, hidden: int = 64, lr: float = 1e-3) -> None:
        g = torch.Generator().manual_seed(seed)
        self.max_ratio = max_ratio
        self.actor = self._mlp(STATE, 1, hidden, g, out=nn.Sigmoid())
        self.critic = self._mlp(STATE + 1, 1, hidden, g)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=lr * 2)
        self.buffer: list[tuple] = []
        self.rng = random.Random(seed)

    @staticmethod
    def _mlp(n_in, n_out, hidden, g, out=None) -> nn.Sequential:
        layers = [nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                  nn.Linear(hidden, n_out)] + ([out] if out is not None else [])  # fmt: skip
        net = nn.Sequential(*layers)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (1 / math.sqrt(max(p.shape[-1], 1))))
        return net

    def act(self, state: torch.Tensor, noise: float) -> float:
        with torch.no_grad():
            mean = float(self.actor(state[None])[0, 0]) * self.max_ratio
        if noise <= 0:
            return mean
        for _ in range(100):  # truncated normal on [0, max_ratio]
            a = self.rng.gauss(mean, noise)
            if 0 <= a <= self.max_ratio:
                return a
        return min(max(mean, 0.0), self.max_ratio)

    def remember(self, state, action, reward, next_state, done) -> None:
        self.buffer.append((state, action / self.max_ratio, reward, next_state, done))
        if len(self.buffer) > 4000:
            self.buffer.pop(0)

    def learn(self, batch: int = 64, gamma: float = 1.0, tau: float = 0.01) -> None:
        if len(self.buffer) < batch:
            return
        sample = self.rng.sample(self.buffer, batch)
        s = torch.stack([b[0] for b in sample])
        a = torch.tensor([[b[1]] for b in sample])
        r = torch.tensor([[b[2]] for b in sample])
        s2 = torch.stack([b[3] for b in sample])
        done = torch.tensor([[float(b[4])] for b in sample])
        with torch.no_grad():
            q2 = self.critic_target(torch.cat([s2, self.actor_target(s2)], 1))
            target = r + gamma * (1 - done) * q2
        q = self.critic(torch.cat([s, a], 1))
        loss = nn.functional.mse_loss(q, target)
        self.critic_opt.zero_grad()
        loss.backward()
        self.critic_opt.step()
        policy = -self.critic(torch.cat([s, self.actor(s)], 1)).mean()
        self.actor_opt.zero_grad()
        policy.backward()
        self.actor_opt.step()
        for net, tgt in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
            with torch.no_grad():
                for p, t in zip(net.parameters(), tgt.parameters()):
                    t.mul_(1 - tau).add_(tau * p)


def _layers(
    model: nn.Module, example, importance, measure: Callable[[nn.Module], float]
) -> tuple[list[str], list[list[float]], list[float], float]:
    """Each prunable group's first producer, its static features, the cost (MACs, or what
    ``measure`` gives) removing all of its channels saves (measured: half of them removed
    alone, doubled; this counts the layers that read the group's channels too) and the model's
    total cost."""
    graph = DependencyGraph(model, example)
    total = float(measure(model))
    names, feats, cost = [], [], []
    for group in graph.prunable_groups():
        name = group.producers[0]
        module = graph.modules[name]
        c_in = getattr(module, "in_channels", getattr(module, "in_features", 1))
        volume = module.weight.shape[0] if module.weight.dim() == 3 else 1
        half = channel_prune(model, example, 0.0, importance, ratios={name: 0.5})
        saved = max(2 * (total - float(measure(half))), 0.0)
        names.append(name)
        feats.append([c_in, len(group), volume])
        cost.append(float(saved))
    if not names:
        raise ValueError("the model has no prunable channel group")
    return names, feats, cost, total


def amc_search(
    model: nn.Module,
    example,
    evaluate: Callable[[nn.Module], float],
    budget: float = 0.5,
    episodes: int = 100,
    warmup: int = 20,
    max_ratio: float = 0.8,
    importance="l2",
    seed: int = 0,
    updates: int = 20,
    latency: Callable[[nn.Module], float] | None = None,
    progress: bool = True,
) -> AMCResult:
    """Search per-group ratios that keep about ``budget`` of the model's MACs (or, with
    ``latency(model) -> seconds``, of its measured latency) and maximise ``evaluate``; ``warmup``
    episodes act at random before the agent learns. Each group's saving is measured once (it
    includes the layers reading its channels) and summed linearly, so the realised budget is
    approximate (``AMCResult.cost_ratio`` is the real one)."""
    if not 0 < budget < 1:
        raise ValueError(f"budget (fraction of MACs kept) must be in (0, 1), got {budget}")
    if not 0 < max_ratio < 1:
        raise ValueError(f"max_ratio must be in (0, 1), got {max_ratio}")
    if episodes < 1 or warmup < 0:
        raise ValueError("episodes must be >= 1 and warmup >= 0")

    def measure(m: nn.Module) -> float:
        return latency(m) if latency is not None else count_macs(m, example)["total"]

    names, feats, cost, total = _layers(model, example, importance, measure)
    scale = [max(f[i] for f in feats) for i in range(3)]
    agent = _Agent(max_ratio, seed)
    best = None
    history: list[tuple[dict[str, float], float]] = []
    for episode in progress_bar(range(episodes), desc="amc", disable=not progress):
        noise = 0.5 if episode < warmup else 0.5 * 0.95 ** (episode - warmup)
        ratios, transitions, removed, previous = {}, [], 0.0, 0.0
        for t, name in enumerate(names):
            left = sum(cost[t + 1 :])
            need = (1 - budget) * total - removed
            state = torch.tensor(
                [t / len(names), *(f / s for f, s in zip(feats[t], scale)), cost[t] / total,
                 removed / total, max(need, 0.0) / total, previous], dtype=torch.float32,
            )  # fmt: skip
            a = agent.act(state, 1.0 if episode < warmup else noise)
            # AMC's clip: at least what the later layers cannot remove at max_ratio
            a = min(max(a, (need - max_ratio * left) / cost[t] if cost[t] else 0.0), max_ratio)
            a = max(a, 0.0)
            ratios[name], removed, previous = a, removed + a * cost[t], a
            transitions.append(state)
        pruned = channel_prune(model, example, 0.0, importance, ratios=ratios)
        reward = float(evaluate(pruned))
        history.append((dict(ratios), reward))
        rewards = [r for _, r in history[-50:]]
        baseline = sum(rewards) / len(rewards)
        spread = (sum((r - baseline) ** 2 for r in rewards) / len(rewards)) ** 0.5 or 1.0
        for t, state in enumerate(transitions):
            done = t == len(transitions) - 1
            following = transitions[t + 1] if not done else state
            # the episode's reward for every step, centred and scaled by the recent spread
            agent.remember(state, ratios[names[t]], (reward - baseline) / spread, following, done)
        if episode >= warmup:
            for _ in range(updates):
                agent.learn()
        if best is None or reward > best[1]:
            best = (dict(ratios), reward)
    kept = channel_prune(model, example, 0.0, importance, ratios=best[0])
    macs_ratio = count_macs(kept, example)["total"] / count_macs(model, example)["total"]
    cost_ratio = measure(kept) / measure(model) if latency is not None else macs_ratio
    return AMCResult(best[0], best[1], macs_ratio, cost_ratio, history)
