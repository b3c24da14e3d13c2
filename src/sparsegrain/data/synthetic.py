"""A synthetic image classification set whose labels are learnable, for tests and smoke runs.

Each class has a smooth prototype (a random 4x4 grid per channel, bilinearly upsampled); a sample is
``0.7 * prototype[label] + 0.3 * uniform noise``, stored as uint8 like a real dataset. Smooth
prototypes survive small random crops, so the default augmentation leaves the task learnable. The
data depend only on the shape arguments and a fixed seed, never on the run seed: every run trains on
the same images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .loader import Normalize, seeded_generator

# Close to the pixel mean and std of the generated images (about 0.52 and 0.17).
SYNTHETIC_NORMALIZE = Normalize(mean=(0.5,), std=(0.17,))


def prototypes(num_classes: int, channels: int, image_size: int) -> Tensor:
    """Class prototypes in [0, 1], ``(num_classes, channels, image_size, image_size)``."""
    g = seeded_generator("synthetic", "prototypes", num_classes, channels, image_size)
    coarse = torch.rand(num_classes, channels, 4, 4, generator=g)
    return F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=True)


def make_split(protos: Tensor, n: int, split: str) -> tuple[Tensor, Tensor]:
    """``n`` samples: uint8 images ``(n, C, H, W)`` and balanced int64 labels ``(n,)``."""
    k, c, h, w = protos.shape
    g = seeded_generator("synthetic", split, k, c, h)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
    noise = torch.rand(n, c, h, w, generator=g)
    images = (0.7 * protos[labels] + 0.3 * noise).mul_(255).round_().to(torch.uint8)
    return images, labels


def make_synthetic(
    num_classes: int, channels: int, image_size: int, n_train: int, n_test: int
) -> dict[str, tuple[Tensor, Tensor]]:
    """Train and test splits drawn from the same class prototypes with independent noise."""
    protos = prototypes(num_classes, channels, image_size)
    return {
        "train": make_split(protos, n_train, "train"),
        "test": make_split(protos, n_test, "test"),
    }
