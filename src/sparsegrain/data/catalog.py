"""Datasets: the ``data`` recipe section, the dataset registry, and ``build_data``.

``build_data(cfg, seed=..., rank=..., world_size=...)`` returns a ``DataBundle`` with a train and a
test loader. Both satisfy one Loader protocol:

- ``for x, y in loader``: ``x`` float32 ``(B, C, H, W)`` normalized, ``y`` int64 ``(B,)``
  (a token dataset, ``synthetic-tokens``: ``x`` int64 ``(B, L)`` token ids);
- ``len(loader)``: batches per epoch; ``loader.dataset_size``: samples in the whole split;
  ``loader.num_samples``: samples this rank reads per epoch;
- ``loader.set_epoch(e)``: order and augmentation of the next pass are a pure function of
  (seed, e, rank, world_size); a sample's augmentation depends on (seed, e, index) only.

The train loader shuffles and drops the last incomplete batch; the test loader does neither and is
never augmented. With ``world_size > 1``, ``batch_size`` is per rank and each rank reads a disjoint
shard (rules in ``loader.epoch_indices``: train cuts the shuffled order to a multiple of
``world_size``, as ``DistributedSampler(drop_last=True)``; test shards are unpadded and cover the
test set exactly).

The readers of each file format are the other modules of ``data``; ``bundles`` holds the
builder that turns what each kind of dataset reads into a ``DataBundle`` of two loaders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from ..core.errors import ConfigError
from ..core.registry import Registry
from ..core.validate import Range, schema, show
from .bundles import (
    DataBundle,
    build_imagefolder,
    build_synthetic,
    build_tokens,
    cifar_builder,
    idx_builder,
    token_shape,
)
from .imagefolder import IMAGENET_NORMALIZE
from .loader import CropFlip, Normalize
from .synthetic import SYNTHETIC_NORMALIZE

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


# Sanity caps, far above any real run and low enough that no size overflows inside torch; a
# synthetic set holds at most SYNTHETIC_LIMIT values, prototypes included (1 GiB of float32).
MAX_BATCH, MAX_SAMPLES, MAX_WORKERS = 2**20, 2**31 - 1, 256
MAX_IMAGE_SIZE, MAX_CHANNELS, MAX_CLASSES = 4096, 4096, 1_000_000
MAX_VOCAB, MAX_SEQ_LEN, MAX_DATA_SEED = 2**24, 2**16, 2**63 - 1
# Keys only some datasets take (``DatasetInfo.options``); refused for the others.
OPTIONAL_KEYS = ("image_size", "num_classes", "channels", "vocab_size", "seq_len", "synthetic_seed")
SYNTHETIC_LIMIT = 2**28


class Count(Range):
    """An int ``data`` key's bounds, in this section's wording (``data.batch_size must be an
    integer >= 1, got 0``)."""

    def refuse(self, where: str, value: Any) -> ConfigError:
        if isinstance(value, int) and not isinstance(value, bool) and self.contains(value):
            return ConfigError(f"{where} must be an integer <= {self.top}, got {show(value)}")
        return ConfigError(f"{where} must be an integer >= {self.lo}, got {show(value)}")


@dataclass
class DataConfig:
    """The ``data`` section of a recipe."""

    name: str = "fashion_mnist"
    root: str | None = None
    batch_size: Annotated[int, Count(1, limit=MAX_BATCH)] = 128
    test_batch_size: Annotated[int, Count(1, limit=MAX_BATCH)] = 512
    train_subset: Annotated[int | None, Count(1, limit=MAX_SAMPLES)] = None
    augment: bool = True
    num_workers: Annotated[int, Count(0, limit=MAX_WORKERS)] = 0
    image_size: Annotated[int | None, Count(1, limit=MAX_IMAGE_SIZE)] = None
    num_classes: Annotated[int | None, Count(2, limit=MAX_CLASSES)] = None
    channels: Annotated[int | None, Count(1, limit=MAX_CHANNELS)] = None
    synthetic_train: Annotated[int, Count(1, limit=MAX_SAMPLES)] = 512
    synthetic_test: Annotated[int, Count(1, limit=MAX_SAMPLES)] = 128
    vocab_size: Annotated[int | None, Count(2, limit=MAX_VOCAB)] = None  # tokens: 256
    seq_len: Annotated[int | None, Count(1, limit=MAX_SEQ_LEN)] = None  # tokens: 32
    synthetic_seed: Annotated[int | None, Count(0, limit=MAX_DATA_SEED)] = None  # tokens: 0

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field, its value and what is allowed.

        The types and bounds are checked here too, for a ``DataConfig`` built directly."""
        if not isinstance(self.name, str):
            raise ConfigError(f"data.name must be a dataset name, got {show(self.name)}")
        try:
            info = DATASETS.get(self.name)
        except ConfigError as e:
            raise ConfigError(f"data.name: {e}") from None
        if self.root is not None and not isinstance(self.root, (str, Path)):
            raise ConfigError(f"data.root must be a directory path or null, got {show(self.root)}")
        if self.root is None and info.needs_root and info.default_root is None:
            raise ConfigError(
                f"data.root is required for dataset '{info.name}' (no default location)"
            )
        if not isinstance(self.augment, bool):
            raise ConfigError(f"data.augment must be true or false, got {show(self.augment)}")
        for field, (_, rng) in schema(DataConfig).items():
            value = getattr(self, field)
            if rng is None or value is None:
                continue
            if field in OPTIONAL_KEYS and field not in info.options:
                allowed = [n for n in DATASETS.names() if field in DATASETS.get(n).options]
                raise ConfigError(
                    f"data.{field}={show(value)} does not apply to dataset '{info.name}'; "
                    f"only to: {', '.join(allowed)} (leave it unset)"
                )
            if isinstance(value, bool) or not isinstance(value, int) or not rng.allows(value):
                raise rng.refuse(f"data.{field}", value)
        if info.name == "synthetic":
            self._check_synthetic_size()
        if info.name == "synthetic-tokens":
            self._check_tokens()

    def _check_synthetic_size(self) -> None:
        size = 28 if self.image_size is None else self.image_size
        classes = 10 if self.num_classes is None else self.num_classes
        channels = 1 if self.channels is None else self.channels
        values = (self.synthetic_train + self.synthetic_test + classes) * channels * size**2
        if values > SYNTHETIC_LIMIT:
            raise ConfigError(
                f"data: a synthetic set of (synthetic_train {self.synthetic_train} + "
                f"synthetic_test {self.synthetic_test} + num_classes {classes}) x channels "
                f"{channels} x image_size {size}^2 = {values} values is over the "
                f"{SYNTHETIC_LIMIT} allowed; make one of them smaller"
            )

    def _check_tokens(self) -> None:
        vocab, seq_len, classes = token_shape(self)
        if vocab - 1 < classes:
            raise ConfigError(
                f"data.vocab_size {vocab} is too small for {classes} classes: ids 1 .. "
                f"vocab_size - 1 are cut into one block per class; use vocab_size >= "
                f"{classes + 1}"
            )
        values = (self.synthetic_train + self.synthetic_test) * seq_len
        if values > SYNTHETIC_LIMIT:
            raise ConfigError(
                f"data: a token set of (synthetic_train {self.synthetic_train} + "
                f"synthetic_test {self.synthetic_test}) x seq_len {seq_len} = {values} tokens "
                f"is over the {SYNTHETIC_LIMIT} allowed; make one of them smaller"
            )


def dataset_inputs(name: str) -> str:
    """What a dataset's loaders yield as ``x``: ``"images"`` or ``"tokens"``."""
    return DATASETS.get(name).inputs


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry: how to build a dataset, which optional fields it takes, and what its
    loaders yield (``"images"`` or ``"tokens"``)."""

    name: str
    build: Callable[..., DataBundle]
    default_root: str | None = None
    needs_root: bool = True
    options: tuple[str, ...] = ()
    inputs: str = "images"


DATASETS = Registry("dataset")


def list_datasets() -> list[tuple[str, str]]:
    """``(name, one-line help)`` for every registered dataset, for ``sparsegrain list datasets``."""
    return [(e.name, e.help) for e in DATASETS.entries()]


def build_data(cfg: DataConfig, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> DataBundle:
    """Load the dataset ``cfg`` names and wrap it in train and test loaders for this rank."""
    cfg.validate()
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size must be an integer >= 1, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(f"rank must be an integer in [0, {world_size - 1}], got {rank!r}")
    info = DATASETS.get(cfg.name)
    root = Path(cfg.root if cfg.root is not None else info.default_root or ".").expanduser()
    bundle = info.build(cfg, root, seed=seed, rank=rank, world_size=world_size)
    if len(bundle.train) == 0:
        raise ConfigError(
            f"data.batch_size={cfg.batch_size} is larger than the {bundle.train.num_samples} "
            f"training samples each of {world_size} rank(s) reads, so an epoch has no batch; "
            f"lower data.batch_size or use more training data"
        )
    return bundle


def _register(name: str, help: str, aliases: tuple[str, ...] = (), **info: Any) -> None:
    DATASETS.register(name, DatasetInfo(name=name, **info), help=help, aliases=aliases)


# Per-channel (mean, std) in pixel units of every dataset; the robustness attacks read them too.
NORMALIZE = {
    "fashion_mnist": Normalize(mean=(0.2860,), std=(0.3530,)),
    "mnist": Normalize(mean=(0.1307,), std=(0.3081,)),
    "cifar10": Normalize(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": Normalize(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
    "synthetic": SYNTHETIC_NORMALIZE,
    "imagefolder": IMAGENET_NORMALIZE,
}

_FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
_MNIST_ROOT = "/usr/share/datasets/mnist"
_register(
    "fashion_mnist",
    "Fashion-MNIST IDX files, 28x28 grey, 10 classes (default root " + _FASHION_ROOT + ")",
    aliases=("fashion-mnist", "fmnist"),
    build=idx_builder(
        "fashion_mnist",
        NORMALIZE["fashion_mnist"],
        CropFlip(pad=2, flip=True),
        FASHION_MNIST_CLASSES,
    ),
    default_root=_FASHION_ROOT,
)
_register(
    "mnist",
    "MNIST IDX files, 28x28 grey digits, 10 classes (default root " + _MNIST_ROOT + ")",
    build=idx_builder(
        "mnist",
        NORMALIZE["mnist"],
        CropFlip(pad=2, flip=False),
        tuple(str(d) for d in range(10)),
    ),
    default_root=_MNIST_ROOT,
)
_register(
    "cifar10",
    "CIFAR-10 python pickles (cifar-10-batches-py), 32x32 RGB, 10 classes; needs data.root",
    aliases=("cifar-10",),
    build=cifar_builder(
        "cifar10",
        10,
        NORMALIZE["cifar10"],
        CIFAR10_CLASSES,
    ),
)
_register(
    "cifar100",
    "CIFAR-100 python pickles (cifar-100-python), 32x32 RGB, 100 fine classes; needs data.root",
    aliases=("cifar-100",),
    build=cifar_builder(
        "cifar100",
        100,
        NORMALIZE["cifar100"],
        None,
    ),
)
_register(
    "imagefolder",
    "ImageNet-style class folders root/train/<class>/*.jpg + root/val/<class>/; needs data.root",
    aliases=("image_folder", "image-folder"),
    build=build_imagefolder,
    options=("image_size",),
)
_register(
    "synthetic",
    "generated learnable images (fixed seed); sizes from synthetic_train/test, image_size, ...",
    build=build_synthetic,
    needs_root=False,
    options=("image_size", "num_classes", "channels"),
)
_register(
    "synthetic-tokens",
    "generated token sequences (ids in blocks per class, fixed seed) for text models; "
    "vocab_size, seq_len, num_classes, synthetic_seed; no augmentation",
    aliases=("synthetic_tokens",),
    build=build_tokens,
    needs_root=False,
    options=("num_classes", "vocab_size", "seq_len", "synthetic_seed"),
    inputs="tokens",
)
