"""Reconstruction-based channel selection (ThiNet, Luo et al. 2017; He et al. 2017) and refit.

A consumer layer computes ``Y = A W`` where ``A`` is its im2col input (``[N_out, K*Cin]``,
gathered through the kernel map's ``nbmap``; ``K = 1`` for ``Linear``). Removing input channel
``c`` drops the ``K`` columns ``B_c`` of ``A``; after refitting ``W`` by least squares on the
remaining columns the squared error grows by exactly

    dRSS_c = trace( W_Bc^T  [ (G^-1)_Bc,Bc ]^-1  W_Bc ),   G = A^T A

(the classical block-deletion identity of linear regression), so the channel that the rest can
reconstruct best is the one with the smallest dRSS -- a duplicated channel scores ~0. The Gram
``G`` is accumulated over calibration batches (a row sample per batch), and ``refit`` solves
``W'_S = G_SS^-1 G_S: W`` for the kept channels S: the least-squares refit of the next layer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from sparseconv import nn as snn
from sparseconv.prune.graph import DependencyGraph
from sparseconv.prune.importance import Importance
from sparseconv.prune.tracing import run_batches
from sparseconv.tensor import SparseTensor


def im2col(module: nn.Module, x) -> torch.Tensor:
    """``[N_out, K, Cin]``: the inputs each output of ``module`` reads (zeros where absent)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, 1, x.shape[-1])
    assert isinstance(x, SparseTensor)
    kmap = module.kernel_map(x)
    padded = torch.cat([x.feats, x.feats.new_zeros(1, x.feats.shape[1])])
    nb = kmap.nbmap.long()
    return padded[torch.where(nb >= 0, nb, x.feats.shape[0])]


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """``[K*Cin, Cout]`` so that ``Y = im2col.reshape(N, K*Cin) @ W``."""
    w = module.weight.detach()
    if isinstance(module, snn.Conv3d):
        return w.reshape(-1, w.shape[2])
    return w.t()


class Reconstruction(Importance):
    """Channel score = output reconstruction error of the next layers without the channel."""

    name = "reconstruction"
    per_weight = False

    def __init__(
        self,
        batches: Iterable,
        max_batches: int | None = None,
        rows_per_batch: int = 8192,
        ridge: float = 1e-6,
        seed: int = 0,
    ) -> None:
        self.batches = batches
        self.max_batches = max_batches
        self.rows = rows_per_batch
        self.ridge = ridge
        self.seed = seed
        self.gram: dict[str, torch.Tensor] = {}

    def calibrate(self, graph: DependencyGraph) -> None:
        names = [
            n
            for n in graph.layer_classes["consumers"]
            if isinstance(graph.modules[n], (snn.Conv3d, nn.Linear))
        ]
        gen = torch.Generator().manual_seed(self.seed)
        self.gram = {}

        def hook(name):
            def fn(module, args):
                a = im2col(module, args[0]).double()
                a = a.reshape(a.shape[0], -1)
                if a.shape[0] > self.rows:
                    a = a[torch.randperm(a.shape[0], generator=gen)[: self.rows].to(a.device)]
                g = (a.t() @ a).cpu()
                self.gram[name] = self.gram[name] + g if name in self.gram else g

            return fn

        handles = [graph.modules[n].register_forward_pre_hook(hook(n)) for n in names]
        run_batches(graph.model, handles, self.batches, self.max_batches)
        if not self.gram:
            raise ValueError("reconstruction needs at least one calibration batch")

    def _regularised(self, g: torch.Tensor) -> torch.Tensor:
        scale = g.diagonal().mean().clamp(min=1e-12)
        return g + self.ridge * scale * torch.eye(g.shape[0], dtype=g.dtype)

    def channel_scores(self, graph: DependencyGraph) -> torch.Tensor:
        self.calibrate(graph)
        out = torch.zeros(len(graph.classes), dtype=torch.float64)
        for name, g in self.gram.items():
            module = graph.modules[name]
            w = weight_matrix(module).double().cpu()
            cin = len(graph.layer_classes["consumers"][name])
            k = w.shape[0] // cin
            ginv = torch.linalg.inv(self._regularised(g))
            for c, cls in enumerate(graph.layer_classes["consumers"][name]):
                cols = torch.arange(k) * cin + c
                wb = w[cols]
                block = ginv[cols][:, cols]
                out[cls] += torch.trace(wb.t() @ torch.linalg.solve(block, wb))
        return out

    def refit(self, graph: DependencyGraph, removed: set[int]) -> None:
        """Least-squares refit of every consumer's weights onto its kept input channels.

        Call before :func:`remove_channels`; entries of removed channels are set to zero and
        removed with the rest of the layer afterwards.
        """
        for name, g in self.gram.items():
            classes = graph.layer_classes["consumers"][name]
            if not any(c in removed for c in classes):
                continue
            module = graph.modules[name]
            w = weight_matrix(module).double().cpu()
            cin = len(classes)
            k = w.shape[0] // cin
            keep_c = torch.tensor([c not in removed for c in classes])
            keep = keep_c.repeat(k)
            gs = self._regularised(g)[keep][:, keep]
            new = torch.zeros_like(w)
            new[keep] = torch.linalg.solve(gs, g[keep] @ w)
            new = new.to(module.weight.dtype)
            with torch.no_grad():
                if isinstance(module, snn.Conv3d):
                    module.weight.copy_(new.reshape(module.weight.shape))
                else:
                    module.weight.copy_(new.t())
