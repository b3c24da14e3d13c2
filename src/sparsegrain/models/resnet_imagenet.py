"""ImageNet-style ResNet-18/34/50 (He et al. 2016), with the v1 / v1.5 bottleneck layouts.

v1 (the paper) puts the stride-2 of a downsampling bottleneck in its first 1x1 conv; v1.5
(torchvision, NVIDIA, MLPerf; the model Campfire prunes) puts it in the 3x3 conv, which sees the
full-resolution map: about 0.5% more top-1 for about 12% more FLOPs. Parameter counts are equal.

Module names and parameter shapes are torchvision's, so a torchvision ``state_dict`` of the same
model loads as is. ``small_input`` swaps the 7x7 stride-2 stem and max-pool for a 3x3 stride-1
stem (the usual CIFAR adaptation), keeping the ``conv1`` and ``maxpool`` names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet_cifar import BasicBlock, conv1x1, conv3x3, downsample, kaiming_init_

LAYOUTS = ("v1", "v1.5")


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4); where the stride sits depends on ``layout``."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, layout: str = "v1.5"):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"ResNet layout must be one of {LAYOUTS}, got {layout!r}")
        stride1, stride3 = (stride, 1) if layout == "v1" else (1, stride)
        out_planes = planes * self.expansion
        self.conv1 = conv1x1(in_planes, planes, stride1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.downsample = downsample(in_planes, out_planes, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """ResNet with four stages of base width w, 2w, 4w, 8w (times 4 for bottlenecks)."""

    def __init__(
        self,
        *,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        layout: str = "v1.5",
        small_input: bool = False,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if small_input:
            self.conv1 = conv3x3(in_channels, width)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        in_planes = width
        stages = []
        for i, blocks in enumerate(layers):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            stage = [block(in_planes, planes, stride, layout)]
            in_planes = planes * block.expansion
            stage += [block(in_planes, planes, 1, layout) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        kaiming_init_(self)
        if zero_init_residual:
            # Goyal et al. 2017: each residual branch starts as zero, so every block is the
            # identity at init and the deep net trains like a shallow one at first.
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))  # (N, w, H/4, W/4); small: (H, W)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
