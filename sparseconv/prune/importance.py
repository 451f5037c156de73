"""Importance criteria: a score per channel class (channel pruning) and per weight (N:M, fine).

Higher score = more important = kept. Every criterion gives channel scores; those defined on
single weights (magnitude, Taylor, Hessian, SNIP, random) also give weight scores, so they serve
N:M and fine-grained pruning too. Channel scores sum the scores of a class's producer output
channels (the filters), as filter pruning does (Li et al. 2017); criteria defined on
activations (APoZ), norms (BN scale) or reconstructions use those instead.

Data-driven criteria take ``batches`` (an iterable of model inputs, or of whatever ``loss_fn``
takes) and, for gradient criteria, ``loss_fn(model, batch) -> scalar loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from sparseconv import nn as snn
from sparseconv.prune.graph import PRODUCER_TYPES, DependencyGraph
from sparseconv.prune.tracing import run_batches

LossFn = Callable[[nn.Module, object], torch.Tensor]


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """``name -> weight`` of every layer N:M / fine-grained pruning acts on (Conv3d, Linear)."""
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, PRODUCER_TYPES)}


def out_axis(module: nn.Module) -> int:
    return 2 if isinstance(module, snn.Conv3d) else 0


def per_output_channel(module: nn.Module, score: torch.Tensor) -> torch.Tensor:
    """Sum a per-weight score over everything but the output-channel axis."""
    axis = out_axis(module)
    return score.transpose(0, axis).reshape(score.shape[axis], -1).sum(1)


class Importance:
    """Base: subclasses give ``weight_scores`` and/or override ``channel_scores``."""

    name = "base"
    per_weight = True

    def weight_scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{self.name} has no per-weight score")

    def channel_scores(self, graph: DependencyGraph) -> torch.Tensor:
        scores = self.weight_scores(graph.model)
        return self._sum_producers(graph, scores)

    def _sum_producers(
        self, graph: DependencyGraph, scores: dict[str, torch.Tensor], post=None
    ) -> torch.Tensor:
        per_channel = {}
        for name in graph.layer_classes["producers"]:
            per = per_output_channel(graph.modules[name], scores[name].double())
            per_channel[name] = post(per) if post is not None else per
        return sum_channel_scores(graph, per_channel)


def sum_channel_scores(
    graph: DependencyGraph, per_channel: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Class scores: every producer's per-output-channel scores added into its channels' classes."""
    out = torch.zeros(len(graph.classes), dtype=torch.float64)
    for name, classes in graph.layer_classes["producers"].items():
        out.index_add_(0, torch.tensor(classes), per_channel[name].double().cpu())
    return out


def filters(module: nn.Module) -> torch.Tensor:
    """``[Cout, everything else]``: one row per output channel (a filter) of a producer (a view
    of the weight: differentiable)."""
    w = module.weight
    axis = out_axis(module)
    return w.transpose(0, axis).reshape(w.shape[axis], -1)


class Magnitude(Importance):
    """Lp norm of the weights (L1: Li et al. 2017; L2: Torch-Pruning's default)."""

    def __init__(self, p: float = 2.0) -> None:
        if not p > 0:
            raise ValueError(f"p must be > 0, got {p}")
        self.p = p
        self.name = f"l{p:g}"

    def weight_scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {n: w.detach().abs().pow(self.p) for n, w in prunable_weights(model).items()}

    def channel_scores(self, graph: DependencyGraph) -> torch.Tensor:
        return self._sum_producers(
            graph, self.weight_scores(graph.model), lambda s: s.pow(1 / self.p)
        )


class BNScale(Importance):
    """|gamma| of the norm after each channel (network slimming, Liu et al. 2017).

    Train with :func:`bn_l1_penalty` added to the loss (``bn_l1`` in the trainer's config) so
    that unimportant channels' scales go towards zero before pruning.
    """

    name = "bn_scale"
    per_weight = False

    def __init__(self, missing: str = "error") -> None:
        if missing not in ("error", "keep"):
            raise ValueError(f"missing must be 'error' or 'keep', got {missing!r}")
        self.missing = missing  # channels with no norm: raise, or keep them (score +inf)

    def channel_scores(self, graph: DependencyGraph) -> torch.Tensor:
        out = torch.zeros(len(graph.classes), dtype=torch.float64)
        seen = torch.zeros(len(graph.classes), dtype=torch.bool)
        for name, classes in graph.layer_classes["norms"].items():
            gamma = graph.modules[name].weight
            if gamma is None:
                raise ValueError(f"bn_scale needs affine norms; {name} has no weight")
            out.index_add_(0, torch.tensor(classes), gamma.detach().abs().double().cpu())
            seen[torch.tensor(classes)] = True
        missing = [g.producers[0] for g in graph.prunable_groups() if not seen[g.classes].all()]
        if missing and self.missing == "error":
            raise ValueError(
                f"bn_scale needs a norm on every prunable channel; none after {missing[:3]} "
                "(ignore those layers or use BNScale(missing='keep'))"
            )
        return torch.where(seen, out, torch.full_like(out, torch.inf))


def bn_l1_penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """``strength * sum |gamma|`` over every BatchNorm: the network-slimming sparsity term."""
    terms = [
        m.weight.abs().sum()
        for m in model.modules()
        if isinstance(m, nn.BatchNorm1d) and m.weight is not None
    ]
    return strength * torch.stack(terms).sum() if terms else torch.zeros(())


class FPGM(Importance):
    """Filter pruning via the geometric median (He et al. 2019): a filter close to the geometric
    median of its layer's filters is replaceable by the others, whatever its norm.

    A filter's score is the sum of its Euclidean distances to the layer's other filters (the
    paper's approximation of the distance to the median): the smallest sums are removed first.
    """

    name = "fpgm"
    per_weight = False

    def channel_scores(self, graph: DependencyGraph) -> torch.Tensor:
        per_channel = {}
        for name in graph.layer_classes["producers"]:
            rows = filters(graph.modules[name]).detach().double()
            per_channel[name] = torch.cdist(rows[None], rows[None])[0].sum(1)
        return sum_channel_scores(graph, per_channel)


class Random(Importance):
    """Random scores: the honest baseline a criterion has to beat."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def weight_scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        return {n: torch.rand(w.shape, generator=g) for n, w in prunable_weights(model).items()}

    def channel_scores(self, graph: DependencyGraph) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.rand(len(graph.classes), generator=g, dtype=torch.float64)


class Uniform(Importance):
    """Keeps the first channels of every group: a uniformly thinner network, no information used."""

    name = "uniform"
    per_weight = False

    def channel_scores(self, graph: DependencyGraph) -> torch.Tensor:
        out = torch.zeros(len(graph.classes), dtype=torch.float64)
        for g in graph.groups:
            out[torch.tensor(g.classes)] = -torch.arange(len(g.classes), dtype=torch.float64) / max(
                1, len(g)
            )
        return out


class _GradientCriterion(Importance):
    """Accumulates per-weight gradient statistics over ``batches`` with ``loss_fn``."""

    def __init__(self, loss_fn: LossFn, batches: Iterable, max_batches: int | None = None) -> None:
        self.loss_fn = loss_fn
        self.batches = batches
        self.max_batches = max_batches
        self.stats: dict[str, torch.Tensor] = {}
        self.n_batches = 0
        self._model_id = None

    def update(self, weights: dict[str, nn.Parameter]) -> None:
        raise NotImplementedError

    def accumulate(self, model: nn.Module, batch) -> None:
        """Add one batch's gradient statistics (usable on its own, e.g. inside a training loop)."""
        weights = prunable_weights(model)
        model.zero_grad(set_to_none=True)
        self.loss_fn(model, batch).backward()
        self.update(weights)
        self.n_batches += 1
        model.zero_grad(set_to_none=True)

    def ensure(self, model: nn.Module) -> None:
        if self._model_id == id(model) and self.n_batches:
            return
        self.stats, self.n_batches, self._model_id = {}, 0, id(model)
        for i, batch in enumerate(self.batches):
            if self.max_batches is not None and i >= self.max_batches:
                break
            self.accumulate(model, batch)
        if not self.n_batches:
            raise ValueError(f"{self.name} needs at least one batch")

    def _add(self, name: str, value: torch.Tensor) -> None:
        self.stats[name] = self.stats[name] + value if name in self.stats else value.clone()


class Taylor(_GradientCriterion):
    """First-order Taylor: the loss change of removing weights is about ``-g * w`` (Molchanov 2019).

    Gradients are summed over batches (the gradient of the total loss); a channel's score is
    ``|sum over its weights of g * w|``, a weight's ``|g * w|``.
    """

    name = "taylor"

    def update(self, weights) -> None:
        for n, w in weights.items():
            if w.grad is not None:
                self._add(n, (w.grad * w).detach())

    def weight_scores(self, model):
        self.ensure(model)
        return {n: s.abs() for n, s in self.stats.items()}

    def channel_scores(self, graph):
        self.ensure(graph.model)
        return self._sum_producers(graph, self.stats, torch.abs)


class Hessian(_GradientCriterion):
    """Second order, Optimal Brain Damage: saliency ``1/2 * H_ii * w_i^2`` with the diagonal
    Hessian estimated by the empirical Fisher, ``sum over batches of g_b^2`` divided by the number
    of batches (squares of per-batch gradients, not the square of their sum).

    ``stats`` holds the running sum of squared gradients, which grows with every batch.
    """

    name = "hessian"

    def update(self, weights) -> None:
        for n, w in weights.items():
            if w.grad is not None:
                self._add(n, w.grad.detach().pow(2))

    def weight_scores(self, model):
        self.ensure(model)
        w = prunable_weights(model)
        return {n: 0.5 * (f / self.n_batches) * w[n].detach().pow(2) for n, f in self.stats.items()}


class SNIP(_GradientCriterion):
    """SNIP (Lee et al. 2019): connection sensitivity ``|g * w|`` at initialisation, before training."""

    name = "snip"

    def update(self, weights) -> None:
        for n, w in weights.items():
            if w.grad is not None:
                self._add(n, (w.grad * w).detach().abs())

    def weight_scores(self, model):
        self.ensure(model)
        total = sum(s.sum() for s in self.stats.values())
        return {n: s / total for n, s in self.stats.items()}


class APoZ(Importance):
    """Average percentage of zeros of the post-activation output (Hu et al. 2016).

    Forward passes over ``batches`` (model inputs) record, for every ReLU module, the fraction
    of zero outputs per channel; a channel's score is ``1 - APoZ`` (a channel that is always zero
    scores 0 and goes first). Channels followed by no ReLU module score 1.
    """

    name = "apoz"
    per_weight = False

    def __init__(self, batches: Iterable, max_batches: int | None = None) -> None:
        self.batches = batches
        self.max_batches = max_batches

    def channel_scores(self, graph: DependencyGraph) -> torch.Tensor:
        acts = graph.layer_classes["activations"]
        if not acts:
            raise ValueError(
                "apoz needs ReLU modules (sparseconv.nn.ReLU or torch.nn.ReLU) in the model"
            )
        zeros = {n: 0.0 for n in acts}
        counts = {n: 0 for n in acts}

        def hook(name):
            def fn(module, args, out):
                f = out.feats if hasattr(out, "feats") else out
                zeros[name] = zeros[name] + (f == 0).double().sum(0).cpu()
                counts[name] += f.shape[0]

            return fn

        handles = [graph.modules[n].register_forward_hook(hook(n)) for n in acts]
        run_batches(graph.model, handles, self.batches, self.max_batches)
        apoz_sum = torch.zeros(len(graph.classes), dtype=torch.float64)
        n_act = torch.zeros(len(graph.classes), dtype=torch.float64)
        for n, classes in acts.items():
            if counts[n]:
                idx = torch.tensor(classes)
                apoz_sum.index_add_(0, idx, zeros[n] / counts[n])
                n_act.index_add_(0, idx, torch.ones(len(classes), dtype=torch.float64))
        self.apoz = torch.where(n_act > 0, apoz_sum / n_act.clamp(min=1), torch.zeros_like(n_act))
        return 1.0 - self.apoz


class GraSP(_GradientCriterion):
    """Gradient signal preservation at initialisation (Wang et al. 2020): keep the weights whose
    removal would most reduce the gradient flow ``g^T g``.

    GraSP scores ``S(w) = -w * (H g)`` (the Hessian-gradient product, by double
    back-propagation over ``batches``) and removes the *highest* ``S``: removing those weights
    reduces the gradient flow least. The score returned is ``-S = w * (H g)``, so that higher
    means keep, as for every other criterion.
    """

    name = "grasp"

    def accumulate(self, model: nn.Module, batch) -> None:
        weights = prunable_weights(model)
        names, params = list(weights), list(weights.values())
        grads = torch.autograd.grad(self.loss_fn(model, batch), params, create_graph=True,
                                    allow_unused=True)  # fmt: skip
        pairs = [(g, p) for g, p in zip(grads, params) if g is not None]
        flow = sum((g * g.detach()).sum() for g, _ in pairs)
        hg = torch.autograd.grad(flow, [p for _, p in pairs], allow_unused=True)
        used = [n for n, g in zip(names, grads) if g is not None]
        for n, h in zip(used, hg):
            if h is not None:
                self._add(n, (weights[n] * h).detach())
        self.n_batches += 1

    def weight_scores(self, model):
        self.ensure(model)
        return dict(self.stats)

    def channel_scores(self, graph):
        self.ensure(graph.model)
        return self._sum_producers(graph, self.stats)
