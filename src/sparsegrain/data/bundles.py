"""What ``build_data`` returns (``DataBundle``) and the builders that make one for each kind of
dataset: tensors read from files or generated (IDX, CIFAR, synthetic images), generated token
ids, and image folders decoded while loading.

A builder is ``build(cfg, root, seed=, rank=, world_size=)``; ``catalog`` registers one per
dataset name. Each builder knows the name it is registered under, which its messages and the
bundle's ``name`` give.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from ..core.errors import ConfigError
from .cifar import read_cifar
from .idx import read_idx_dataset
from .imagefolder import ImageFolderLoader, scan_image_folder
from .loader import CropFlip, Normalize, TensorLoader, subset_indices
from .synthetic import SYNTHETIC_NORMALIZE, make_synthetic
from .tokens import TokenLoader, make_tokens

if TYPE_CHECKING:
    from .catalog import DataConfig

Loader = TensorLoader | ImageFolderLoader | TokenLoader


@dataclass
class DataBundle:
    """What ``build_data`` returns: two loaders and the facts a model needs. A token dataset
    has no channels or image size (both None) and gives its ``vocab_size`` and ``seq_len``."""

    train: Loader
    test: Loader
    num_classes: int
    in_channels: int | None
    image_size: int | None
    name: str
    train_size: int
    test_size: int
    class_names: tuple[str, ...] | None = None
    vocab_size: int | None = None
    seq_len: int | None = None


def token_shape(cfg: DataConfig) -> tuple[int, int, int]:
    """``(vocab_size, seq_len, num_classes)`` of a token dataset's config, defaults filled in."""
    vocab = cfg.vocab_size if cfg.vocab_size is not None else 256
    seq_len = cfg.seq_len if cfg.seq_len is not None else 32
    return vocab, seq_len, cfg.num_classes if cfg.num_classes is not None else 4


def _subset(cfg: DataConfig, n: int, seed: int, name: str) -> Tensor | None:
    """Indices of ``data.train_subset`` training samples, or None for the whole set."""
    if cfg.train_subset is None:
        return None
    if cfg.train_subset > n:
        raise ConfigError(
            f"data.train_subset={cfg.train_subset} exceeds the {n} training samples of "
            f"'{name}'; use at most {n} or leave it unset"
        )
    return subset_indices(n, cfg.train_subset, seed)


def _tensor_bundle(
    name: str,
    cfg: DataConfig,
    splits: dict[str, tuple[Tensor, Tensor]],
    *,
    num_classes: int,
    normalize: Normalize,
    augment: CropFlip | None,
    class_names: tuple[str, ...] | None,
    seed: int,
    rank: int,
    world_size: int,
) -> DataBundle:
    x_train, y_train = splits["train"]
    x_test, y_test = splits["test"]
    keep = _subset(cfg, len(y_train), seed, name)
    if keep is not None:
        x_train, y_train = x_train[keep], y_train[keep]
    common = dict(normalize=normalize, seed=seed, rank=rank, world_size=world_size)
    train = TensorLoader(
        x_train,
        y_train,
        batch_size=cfg.batch_size,
        train=True,
        augment=augment if cfg.augment else None,
        **common,
    )
    test = TensorLoader(x_test, y_test, batch_size=cfg.test_batch_size, train=False, **common)
    return DataBundle(
        train=train,
        test=test,
        num_classes=num_classes,
        in_channels=int(x_train.shape[1]),
        image_size=int(x_train.shape[2]),
        name=name,
        train_size=train.dataset_size,
        test_size=test.dataset_size,
        class_names=class_names,
    )


def idx_builder(name: str, normalize: Normalize, augment: CropFlip, classes: tuple[str, ...]):
    def build(cfg: DataConfig, root: Path, **kw: int) -> DataBundle:
        hint = f"set `data.root` to a directory holding the {name} IDX files (raw or .gz)"
        if name == "fashion_mnist" and cfg.root is None:  # the Debian package's location
            hint = (
                "install Debian's `dataset-fashion-mnist` package "
                f"(`apt-get install dataset-fashion-mnist`) or {hint[0].lower()}{hint[1:]}"
            )
        return _tensor_bundle(
            name,
            cfg,
            read_idx_dataset(root, len(classes), hint),
            num_classes=len(classes),
            normalize=normalize,
            augment=augment,
            class_names=classes,
            **kw,
        )

    return build


def cifar_builder(name: str, num_classes: int, normalize: Normalize, classes):
    def build(cfg: DataConfig, root: Path, **kw: int) -> DataBundle:
        return _tensor_bundle(
            name,
            cfg,
            read_cifar(root, name),
            num_classes=num_classes,
            normalize=normalize,
            augment=CropFlip(pad=4, flip=True),
            class_names=classes,
            **kw,
        )

    return build


def build_synthetic(cfg: DataConfig, root: Path, **kw: int) -> DataBundle:
    size = cfg.image_size if cfg.image_size is not None else 28
    classes = cfg.num_classes if cfg.num_classes is not None else 10
    channels = cfg.channels if cfg.channels is not None else 1
    splits = make_synthetic(classes, channels, size, cfg.synthetic_train, cfg.synthetic_test)
    return _tensor_bundle(
        "synthetic",
        cfg,
        splits,
        num_classes=classes,
        normalize=SYNTHETIC_NORMALIZE,
        augment=CropFlip(pad=max(1, size // 14), flip=False),
        class_names=None,
        **kw,
    )


def build_tokens(cfg: DataConfig, root: Path, *, seed: int, rank: int, world_size: int):
    vocab, seq_len, classes = token_shape(cfg)
    n_train, n_test, data_seed = cfg.synthetic_train, cfg.synthetic_test, cfg.synthetic_seed or 0
    splits = make_tokens(classes, vocab, seq_len, n_train, n_test, data_seed)
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    keep = _subset(cfg, len(y_train), seed, "synthetic-tokens")
    if keep is not None:
        x_train, y_train = x_train[keep], y_train[keep]
    common = dict(seed=seed, rank=rank, world_size=world_size)
    train = TokenLoader(x_train, y_train, batch_size=cfg.batch_size, train=True, **common)
    test = TokenLoader(x_test, y_test, batch_size=cfg.test_batch_size, train=False, **common)
    return DataBundle(
        train=train,
        test=test,
        num_classes=classes,
        in_channels=None,
        image_size=None,
        name="synthetic-tokens",
        train_size=train.dataset_size,
        test_size=test.dataset_size,
        vocab_size=vocab,
        seq_len=seq_len,
    )


def build_imagefolder(
    cfg: DataConfig, root: Path, *, seed: int, rank: int, world_size: int
) -> DataBundle:
    size = cfg.image_size if cfg.image_size is not None else 224
    classes, train_samples, val_samples = scan_image_folder(root)
    keep = _subset(cfg, len(train_samples), seed, "imagefolder")
    if keep is not None:
        train_samples = [train_samples[i] for i in keep.tolist()]
    common = dict(
        image_size=size, num_workers=cfg.num_workers, seed=seed, rank=rank, world_size=world_size
    )
    # augment=False gives the train split the deterministic eval transform.
    train = ImageFolderLoader(
        train_samples, batch_size=cfg.batch_size, train=True, augment=cfg.augment, **common
    )
    test = ImageFolderLoader(
        val_samples, batch_size=cfg.test_batch_size, train=False, augment=False, **common
    )
    return DataBundle(
        train=train,
        test=test,
        num_classes=len(classes),
        in_channels=3,
        image_size=size,
        name="imagefolder",
        train_size=train.dataset_size,
        test_size=test.dataset_size,
        class_names=tuple(classes),
    )
