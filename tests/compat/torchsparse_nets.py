"""SPVNAS's MinkUNet written against TorchSparse's API (``torchsparse`` and ``spnn`` are modules:
here always sparseconv's front end), with SPVNAS's module names."""

from __future__ import annotations

from torch import nn


def conv_block(spnn, c_in, c_out, ks=3, stride=1, dilation=1):
    return nn.Sequential(spnn.Conv3d(c_in, c_out, ks, dilation=dilation, stride=stride),
                         spnn.BatchNorm(c_out), spnn.ReLU(True))  # fmt: skip


def deconv_block(spnn, c_in, c_out, ks=3, stride=1):
    return nn.Sequential(spnn.Conv3d(c_in, c_out, ks, stride=stride, transposed=True),
                         spnn.BatchNorm(c_out), spnn.ReLU(True))  # fmt: skip


class ResidualBlock(nn.Module):
    def __init__(self, spnn, c_in, c_out, ks=3, stride=1, dilation=1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            spnn.Conv3d(c_in, c_out, ks, dilation=dilation, stride=stride), spnn.BatchNorm(c_out),
            spnn.ReLU(True), spnn.Conv3d(c_out, c_out, ks, dilation=dilation, stride=1),
            spnn.BatchNorm(c_out),
        )  # fmt: skip
        if c_in == c_out and stride == 1:
            self.downsample = nn.Identity()
        else:
            self.downsample = nn.Sequential(
                spnn.Conv3d(c_in, c_out, 1, stride=stride), spnn.BatchNorm(c_out)
            )
        self.relu = spnn.ReLU(True)

    def forward(self, x):
        return self.relu(self.net(x) + self.downsample(x))


class MinkUNet(nn.Module):
    def __init__(self, torchsparse, spnn, in_channels=4, num_classes=19, cr=1.0) -> None:
        super().__init__()
        self.torchsparse = torchsparse
        cs = [int(cr * x) for x in (32, 32, 64, 128, 256, 256, 128, 96, 96)]
        self.stem = nn.Sequential(
            spnn.Conv3d(in_channels, cs[0], 3, stride=1), spnn.BatchNorm(cs[0]), spnn.ReLU(True),
            spnn.Conv3d(cs[0], cs[0], 3, stride=1), spnn.BatchNorm(cs[0]), spnn.ReLU(True),
        )  # fmt: skip
        for i in range(4):
            setattr(self, f"stage{i + 1}", nn.Sequential(
                conv_block(spnn, cs[i], cs[i], ks=2, stride=2),
                ResidualBlock(spnn, cs[i], cs[i + 1]), ResidualBlock(spnn, cs[i + 1], cs[i + 1]),
            ))  # fmt: skip
        for j in range(4):
            setattr(self, f"up{j + 1}", nn.ModuleList([
                deconv_block(spnn, cs[4 + j], cs[5 + j], ks=2, stride=2),
                nn.Sequential(ResidualBlock(spnn, cs[5 + j] + cs[3 - j], cs[5 + j]),
                              ResidualBlock(spnn, cs[5 + j], cs[5 + j])),
            ]))  # fmt: skip
        self.classifier = nn.Sequential(nn.Linear(cs[8], num_classes))

    def forward(self, x):
        skips = [self.stem(x)]
        for i in range(4):
            skips.append(getattr(self, f"stage{i + 1}")(skips[-1]))
        y = skips[4]
        for j in range(4):
            up = getattr(self, f"up{j + 1}")
            y = up[0](y)
            y = up[1](self.torchsparse.cat([y, skips[3 - j]]))
        return self.classifier(y.F)
