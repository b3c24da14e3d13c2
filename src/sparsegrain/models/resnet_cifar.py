"""CIFAR-style ResNet (He et al. 2016, sec. 4.2): 6n+2 layers, three stages of width w, 2w, 4w.

Shortcuts that change shape are a 1x1 conv + BN ("option B" of the paper), so every weight the
library may prune is a Conv/Linear. The 3x3 stride-1 stem and the absence of a max-pool keep the
full resolution of 28-32 px images; global average pooling makes any input size work.

Module names are those of torchvision's ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``) so name patterns in recipes read the same on every ResNet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    # No bias: a BN follows every conv, and a bias before BN is cancelled by its mean.
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


def downsample(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    """The projection shortcut (1x1 conv + BN), or None when the identity fits."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


def kaiming_init_(model: nn.Module) -> nn.Module:
    """He-normal conv weights (fan_out, as torchvision), BN to identity, Linear left at default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class BasicBlock(nn.Module):
    """Two 3x3 convs and a shortcut; the stride sits in ``conv1``.

    ``layout`` is accepted for a common signature with :class:`Bottleneck`: both ResNet layouts
    (v1, v1.5) are the same for this block. ReLUs are functional, not modules, so a forward hook
    on a BN sees its real output (an in-place ReLU module would overwrite it).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, layout: str = "v1.5"):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample(in_planes, planes, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-``depth`` for small images: depth = 6n + 2, n BasicBlocks per stage."""

    def __init__(self, *, depth: int, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._stage(width, width, n, stride=1)
        self.layer2 = self._stage(width, 2 * width, n, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        kaiming_init_(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (N, w, H, W): full resolution, no max-pool
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 4w, H/4, W/4)
        return self.fc(torch.flatten(self.avgpool(x), 1))
