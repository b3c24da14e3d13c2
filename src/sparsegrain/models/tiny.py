"""Tiny models for tests: milliseconds per forward pass, and odd layer types on purpose.

``resnet_tiny`` and ``vgg_tiny`` are small instances of the real architectures (registered in
``models/__init__.py``); the two here have no full-size counterpart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet_cifar import kaiming_init_


class MLPTiny(nn.Module):
    """Flatten, ``fc1`` (C*S*S -> hidden), ReLU, ``fc`` (hidden -> classes): Linear-only pruning."""

    def __init__(
        self, *, num_classes: int = 10, in_channels: int = 3, input_size: int = 28, hidden: int = 32
    ):
        super().__init__()
        self.input_size = input_size
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels * input_size * input_size, hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"mlp_tiny input size mismatch\n  expected: (N, C, {self.input_size}, "
                f"{self.input_size}) (option input_size)\n  got:      {tuple(x.shape)}"
            )
        return self.fc(F.relu(self.fc1(self.flatten(x))))


class ConvNetTiny(nn.Module):
    """One conv of each awkward kind, to test structures on them.

    Weight shapes (K, C/groups, R, S) for width w (default 8), input channels c:

    ===========  ==========================  ====================================
    name         weight                      why it is here
    ===========  ==========================  ====================================
    conv1        (w, c, 3, 3)                plain first conv
    grouped      (2w, w/2, 3, 3), groups=2   C is per group; stride 2
    depthwise    (2w, 1, 3, 3), groups=2w    one input channel per filter
    pointwise    (2w, 2w, 1, 1)              window structures are meaningless here
    conv1x3      (2w, 2w, 1, 3)              one kernel row per kernel
    conv3x1      (2w, 2w, 3, 1)              kernel rows of length 1
    dilated      (2w, 2w, 3, 3), dilation 2  has a bias and no BN; stride 2
    fc           (classes, 2w)               classifier
    ===========  ==========================  ====================================
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 8):
        super().__init__()
        if width < 2 or width % 2:
            raise ValueError(f"convnet_tiny width must be an even integer >= 2, got {width}")
        w, w2 = width, 2 * width
        self.conv1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.grouped = nn.Conv2d(w, w2, 3, stride=2, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(w2)
        self.depthwise = nn.Conv2d(w2, w2, 3, padding=1, groups=w2, bias=False)
        self.bn3 = nn.BatchNorm2d(w2)
        self.pointwise = nn.Conv2d(w2, w2, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(w2)
        self.conv1x3 = nn.Conv2d(w2, w2, (1, 3), padding=(0, 1), bias=False)
        self.bn5 = nn.BatchNorm2d(w2)
        self.conv3x1 = nn.Conv2d(w2, w2, (3, 1), padding=(1, 0), bias=False)
        self.bn6 = nn.BatchNorm2d(w2)
        self.dilated = nn.Conv2d(w2, w2, 3, stride=2, padding=2, dilation=2, bias=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w2, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.grouped(x)))  # (N, 2w, H/2, W/2)
        x = F.relu(self.bn3(self.depthwise(x)))
        x = F.relu(self.bn4(self.pointwise(x)))
        x = F.relu(self.bn5(self.conv1x3(x)))
        x = F.relu(self.bn6(self.conv3x1(x)))
        x = F.relu(self.dilated(x))  # (N, 2w, H/4, W/4)
        return self.fc(torch.flatten(self.avgpool(x), 1))
