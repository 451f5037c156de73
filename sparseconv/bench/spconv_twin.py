"""A spconv twin of ``MinkUNet``: the same layers from spconv's modules, with the same weights.

Submanifold k3 and k1 convs become ``SubMConv3d`` (one ``indice_key`` per stride and kernel
size, as a spconv user would share them), the k2s2 down convs ``SparseConv3d`` and the k2s2 transposed convs
``SparseInverseConv3d`` on the down conv's key, so the twin returns to the same coordinates.
With k = s = 2 spconv's output set (every cell with an input) equals sparseconv's Minkowski
rule, so the two networks compute the same function and their outputs are compared before
they are timed. Weights are converted with :func:`sparseconv.nn.convert.to_spconv`.
"""

from __future__ import annotations

import torch
from torch import nn

from sparseconv import nn as snn
from sparseconv.bench import peers
from sparseconv.models import MinkUNet
from sparseconv.models.blocks import ConvBlock, ResidualBlock
from sparseconv.nn.convert import to_spconv


def _conv(spconv, conv: snn.Conv3d, key: str, algo: dict):
    k, s = conv.kernel_size[0], conv.stride[0]
    args = (conv.in_channels, conv.out_channels, k)
    if conv.transposed:
        layer = spconv.SparseInverseConv3d(*args, indice_key=key, bias=False, **algo)
    elif s == 1:
        layer = spconv.SubMConv3d(*args, indice_key=key, bias=False, **algo)
    else:
        layer = spconv.SparseConv3d(*args, stride=s, indice_key=key, bias=False, **algo)
    with torch.no_grad():
        w = conv.weight.detach().cpu()
        if w.shape[0] == 1 and s == 1 and not conv.transposed:
            # spconv runs a 1x1x1 submanifold conv as ``features @ weight.view(Cin, Cout)``:
            # the [Cout, 1, 1, 1, Cin] parameter's memory is read as [Cin, Cout]
            layer.weight.copy_(w[0].reshape(layer.weight.shape))
        else:
            layer.weight.copy_(to_spconv(w, conv.kernel_size))
    return layer


def _norm(bn: nn.BatchNorm1d) -> nn.BatchNorm1d:
    twin = nn.BatchNorm1d(bn.num_features, bn.eps, bn.momentum)
    twin.load_state_dict(bn.state_dict())
    return twin


def _block(spconv, block: ConvBlock, key: str, algo: dict):
    conv, bn = block[0], block[1]
    return spconv.SparseSequential(_conv(spconv, conv, key, algo), _norm(bn), nn.ReLU())


class _TwinResidual(nn.Module):
    def __init__(self, spconv, block: ResidualBlock, key: str, algo: dict) -> None:
        super().__init__()
        main = block.main
        self.main = spconv.SparseSequential(
            _conv(spconv, main[0], key, algo), _norm(main[1]), nn.ReLU(),
            _conv(spconv, main[3], key, algo), _norm(main[4]),
        )  # fmt: skip
        self.shortcut = (
            # a k1 conv must not share the k3 convs' key: spconv would reuse their pairs
            spconv.SparseSequential(
                _conv(spconv, block.shortcut[0], f"{key}k1", algo), _norm(block.shortcut[1])
            )  # fmt: skip
            if len(block.shortcut)
            else None
        )

    def forward(self, x):
        y = self.main(x)
        skip = self.shortcut(x).features if self.shortcut is not None else x.features
        return y.replace_feature(torch.relu(y.features + skip))


class SpconvMinkUNet(nn.Module):
    """``forward(sparse_conv_tensor) -> [N, classes]``, rows in the input's order."""

    def __init__(self, net: MinkUNet, native_algo: bool) -> None:
        super().__init__()
        import spconv.pytorch as spconv

        algo = dict(algo=spconv.ConvAlgo.Native) if native_algo else {}
        self.stem = spconv.SparseSequential(*(_block(spconv, b, "subm1", algo) for b in net.stem))
        self.down = nn.ModuleList()
        for i, stage in enumerate(net.down):
            layers = [_block(spconv, stage[0], f"down{i}", algo)]
            layers += [_TwinResidual(spconv, b, f"subm{2 ** (i + 1)}", algo) for b in stage[1:]]
            self.down.append(nn.ModuleList(layers))
        self.up = nn.ModuleList(_block(spconv, net.up[j], f"down{3 - j}", algo) for j in range(4))
        self.fuse = nn.ModuleList(
            nn.ModuleList(
                _TwinResidual(spconv, b, f"subm{2 ** (3 - j)}", algo) for b in net.fuse[j]
            )
            for j in range(4)
        )
        self.classifier = nn.Linear(net.classifier.in_features, net.classifier.out_features)
        self.classifier.load_state_dict(net.classifier.state_dict())

    def forward(self, x) -> torch.Tensor:
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(_chain(stage, skips[-1]))
        y = skips[4]
        for j in range(4):
            y = self.up[j](y)
            skip = skips[3 - j]
            y = _chain(self.fuse[j], y.replace_feature(torch.cat([y.features, skip.features], 1)))
        return self.classifier(y.features)


def _chain(layers: nn.ModuleList, x):
    """Apply layers that each take and return a spconv tensor (spconv's SparseSequential would
    hand a plain module the features instead)."""
    for layer in layers:
        x = layer(x)
    return x


def twin_input(coords: torch.Tensor, feats: torch.Tensor):
    """The spconv tensor of the same voxels: indices shifted to be non-negative (by a multiple
    of 16, so every stride up to 16 floors alike in both libraries), rows in the same order."""
    import spconv.pytorch as spconv

    shifted, shape = peers.nonnegative(coords.cpu())
    batch = int(coords[:, 0].max()) + 1 if len(coords) else 1
    return spconv.SparseConvTensor(feats, shifted.to(feats.device), shape, batch)
