"""ImageNet-style class folders (``root/train/<class>/*.jpg``, ``root/val/<class>/``), via PIL.

The transforms follow torchvision's ImageNet recipe without depending on it: train is
RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) + RandomHorizontalFlip; test is
Resize(round(size / 0.875)) on the short side + CenterCrop(size). Samples leave the workers as uint8
and are normalized batch-wise in the main process (a quarter of the bytes through the worker pipes).

Each sample's augmentation comes from its own ``random.Random(mix_seed(seed, epoch, index))``, so it
does not depend on the number of workers, their scheduling, the rank, or what was read before.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..core.errors import ConfigError
from .loader import Normalize, ShardedLoader, mix_seed

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
IMAGENET_NORMALIZE = Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def scan_split(root: Path, split: str) -> tuple[list[str], list[tuple[str, int]]]:
    """Sorted class names and ``(path, class index)`` samples of ``root/split``."""
    base = root / split
    if not base.is_dir():
        raise ConfigError(
            f"image folder {base} does not exist; data.root must hold train/<class>/ and "
            f"val/<class>/ directories of images"
        )
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise ConfigError(f"image folder {base} has no class sub-directories")
    samples = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (base / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files and split == "train":
            raise ConfigError(
                f"class folder {base / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        samples.extend((str(p), label) for p in files)
    if not samples:
        raise ConfigError(f"image folder {base} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return classes, samples


def scan_image_folder(root: Path) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """Class names and train/val samples; both splits must list the same classes."""
    classes, train = scan_split(root, "train")
    val_classes, val = scan_split(root, "val")
    if classes != val_classes:
        only_train = sorted(set(classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(classes))
        raise ConfigError(
            f"image folder {root}: train/ and val/ must have the same class folders; only in "
            f"train: {only_train or 'none'}, only in val: {only_val or 'none'}"
        )
    return classes, train, val


def random_resized_box(
    width: int, height: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: ``(top, left, h, w)`` of the crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    # Fallback: the whole image, center-cropped to the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_transform(img: Image.Image, size: int, rng: random.Random) -> Image.Image:
    top, left, h, w = random_resized_box(img.width, img.height, rng)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def eval_transform(img: Image.Image, size: int) -> Image.Image:
    short = round(size / 0.875)
    w, h = img.size
    if w <= h:
        new_w, new_h = short, int(short * h / w)
    else:
        new_w, new_h = int(short * w / h), short
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


class ImageFolderDataset(Dataset):
    """Map-style dataset indexed by ``(index, epoch)`` pairs; returns uint8 ``(3, S, S)``, label.

    ``augment`` picks the random train transform; otherwise the deterministic eval transform.
    """

    def __init__(self, samples: list[tuple[str, int]], size: int, augment: bool, seed: int):
        self.samples, self.size, self.augment, self.seed = samples, size, augment, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        index, epoch = key
        path, label = self.samples[index]
        try:
            with Image.open(path) as f:
                img = f.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise ConfigError(f"cannot decode image {path}: {e}") from e
        if self.augment:
            img = train_transform(img, self.size, random.Random(mix_seed(self.seed, epoch, index)))
        else:
            img = eval_transform(img, self.size)
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1), label


class ImageFolderLoader(ShardedLoader):
    """The Loader protocol over a ``torch.utils.data.DataLoader`` with ``num_workers`` workers.

    Order and sharding follow ``epoch_indices`` (as for in-memory data); the DataLoader gets this
    epoch's ``(index, epoch)`` list as its sampler and a generator seeded from (seed, epoch, rank),
    so worker seeds are reproducible too.
    """

    def __init__(
        self,
        samples: list[tuple[str, int]],
        *,
        image_size: int,
        batch_size: int,
        train: bool,
        augment: bool = True,
        num_workers: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(
            len(samples),
            batch_size=batch_size,
            train=train,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        self.dataset = ImageFolderDataset(samples, image_size, augment and train, seed)
        self.num_workers = int(num_workers)
        self.normalize = IMAGENET_NORMALIZE

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        keys = [(int(i), self.epoch) for i in self.indices()]
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=keys,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(
                mix_seed(self.seed, "workers", self.epoch, self.rank)
            ),
            drop_last=self.train,
        )
        try:
            for x, y in loader:
                yield self.normalize(x), y.to(torch.int64)
        except ConfigError as e:
            # A worker's error arrives wrapped with its traceback; keep the one-line message.
            last = str(e).strip().splitlines()[-1]
            prefix = f"{ConfigError.__module__}.{ConfigError.__name__}: "
            if last.startswith(prefix) and "Original Traceback" in str(e):
                raise ConfigError(last[len(prefix) :]) from None
            raise
