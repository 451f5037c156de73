"""Small scenes and networks shared by the pruning tests."""

import torch
from torch import nn

import sparseconv as sc
from sparseconv import nn as snn


def scene(n: int = 2500, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, 3, generator=g) * torch.tensor([10.0, 10.0, 3.0])
    feats = torch.cat([pts, torch.rand(n, 1, generator=g)], 1)
    x, _ = sc.voxelize(pts, 0.25, features=feats)
    return x, torch.cat([torch.zeros(n, 1), pts], 1)


class SkipNet(nn.Module):
    """A user-defined network: residual add, strided conv, transposed conv, concat skip, Linear head."""

    def __init__(self, c_in: int = 4, c: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.stem = snn.Sequential(snn.Conv3d(c_in, c, 3), snn.BatchNorm(c), snn.ReLU())
        self.res = snn.Sequential(snn.Conv3d(c, c, 3), snn.BatchNorm(c))
        self.down = snn.Sequential(
            snn.Conv3d(c, 2 * c, 2, stride=2), snn.BatchNorm(2 * c), snn.ReLU()
        )
        self.up = snn.Conv3d(2 * c, c, 2, stride=2, transposed=True)
        self.mix = snn.Sequential(snn.Conv3d(2 * c, c, 3), snn.BatchNorm(c), snn.ReLU())
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        x = self.stem(x)
        x = x.replace_feats(torch.relu(x.feats + self.res(x).feats))
        y = self.up(self.down(x))
        y = self.mix(y.replace_feats(torch.cat([y.feats, x.feats], 1)))
        return self.head(y.feats)


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so a lossless check means something."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
    return model.eval()


def run(model, example):
    return model(*example) if isinstance(example, tuple) else model(example)


class ChainNet(nn.Module):
    """conv -> BN -> ReLU -> conv -> Linear: one prunable group with a single consumer."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.a = snn.Sequential(snn.Conv3d(4, c, 3), snn.BatchNorm(c), snn.ReLU())
        self.b = snn.Conv3d(c, 6, 3)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.b(self.a(x)).feats)


def mse_loss(model, example):
    return run(model, example).square().mean()
