"""VGG with BatchNorm for small images (Simonyan & Zisserman 2015; the usual CIFAR adaptation).

The conv stack of VGG-11/16 (configurations A and D) with BN after every conv, then global
average pooling and a single Linear classifier instead of the three 4096-wide FC layers, which
were sized for 224 px ImageNet. Max-pools use ``ceil_mode`` so 28 px inputs work: on 32 px the
shapes are those of the standard model, on 28 px the maps go 28, 14, 7, 4, 2, 1.

Module names: ``features.N`` (the first conv is ``features.0``), ``avgpool``, ``classifier``.
"""

from __future__ import annotations

import torch
from torch import nn

from .resnet_cifar import kaiming_init_

# Channel multipliers of the base width ("M" = 2x2 max-pool). Base 64 gives the paper's widths.
VGG_CFGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"),
    "vgg16": (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"),
    "vgg_tiny": (1, "M", 2, 2, "M"),
}


class VGG(nn.Module):
    """Conv-BN-ReLU stack from ``cfg`` (multiples of ``width``), global pool, one Linear."""

    def __init__(
        self,
        *,
        cfg: tuple[int | str, ...],
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
                continue
            out = int(item) * width
            # No conv bias: the BN right after it would cancel it.
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
