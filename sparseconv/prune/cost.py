"""MACs of a sparse network on a given input: what a pruning actually saves.

A sparse conv performs one ``Cin x Cout`` multiply-accumulate per kernel-map pair, so its MACs
are ``pairs * Cin * Cout`` (the map is the real work, not ``N * K``); a ``Linear`` does
``rows * in * out``. Counted with forward hooks over one pass; maps come from the input's cache.
"""

from __future__ import annotations

from torch import nn

from sparseconv import nn as snn
from sparseconv.prune.tracing import call_model, observed


def count_macs(model: nn.Module, example) -> dict[str, int]:
    """MACs per layer (Conv3d and Linear) for one forward pass on ``example``; key ``"total"``."""
    macs: dict[str, int] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(module, args, out):
        x = args[0]
        if isinstance(module, snn.Conv3d):
            kmap = module.kernel_map(x)
            n = int(kmap.in_idx.numel()) * module.in_channels * module.out_channels
        else:
            n = x.numel() // x.shape[-1] * module.in_features * module.out_features
        macs[names[module]] = macs.get(names[module], 0) + n

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (snn.Conv3d, nn.Linear))
    ]
    with observed(model, handles):
        call_model(model, example)
    macs["total"] = sum(macs.values())
    return macs
