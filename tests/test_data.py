"""Data layer: IDX / CIFAR / image-folder / synthetic readers, loaders, sharding, validation."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sparsegrain.core.errors import ConfigError
from sparsegrain.data.catalog import DATASETS, DataConfig, build_data, list_datasets
from sparsegrain.data.cifar import RestrictedUnpickler
from sparsegrain.data.imagefolder import IMAGENET_NORMALIZE
from sparsegrain.data.loader import CropFlip, Normalize, TensorLoader, epoch_indices, subset_indices

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ---- fixtures: tiny files in the real formats ------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x00000800 | array.ndim  # 0x08 = unsigned byte
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_idx_dir(root: Path, gz: bool, n_train: int = 20, n_test: int = 7) -> dict:
    """IDX files with random 28x28 images and labels 0..9 (cycling); returns the arrays."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)[::-1].copy()
        write_idx(root / IDX_NAMES[split][0], images, gz)
        write_idx(root / IDX_NAMES[split][1], labels, gz)
        arrays[split] = (images, labels)
    return arrays


def norm_ref(v, mean: float, std: float) -> np.ndarray:
    """The documented formula ((v / 255) - mean) / std, one float32 operation at a time."""
    v = np.asarray(v, dtype=np.float32)
    return (v / np.float32(255) - np.float32(mean)) / np.float32(std)


def write_cifar_batch(path: Path, data: np.ndarray, labels, label_key: bytes, protocol=2):
    """A batch dict as in the real files: bytes keys, uint8 (N, 3072) array, list of labels."""
    d = {
        b"batch_label": b"fixture",
        label_key: list(int(v) for v in labels),
        b"data": data,
        b"filenames": [f"img{i}.png".encode() for i in range(len(labels))],
    }
    if label_key == b"fine_labels":
        d[b"coarse_labels"] = [int(v) // 5 for v in labels]
    path.write_bytes(pickle.dumps(d, protocol=protocol))


def make_cifar10(base: Path, per_batch: int = 3, n_test: int = 4, protocol: int = 2) -> dict:
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    train_x, train_y = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=per_batch)
        write_cifar_batch(base / f"data_batch_{i}", x, y, b"labels", protocol)
        train_x.append(x)
        train_y.append(y)
    test_x = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    test_y = rng.integers(0, 10, size=n_test)
    write_cifar_batch(base / "test_batch", test_x, test_y, b"labels", protocol)
    return {
        "train": (np.concatenate(train_x), np.concatenate(train_y)),
        "test": (test_x, test_y),
    }


def make_image_folder(root: Path, size=(40, 30)) -> None:
    """train/{cat,dog} with 3 images each (PNG, JPG, grey BMP), val/{cat,dog} with 2 each."""
    rng = np.random.default_rng(2)
    counts = {"train": 3, "val": 2}
    for split, n in counts.items():
        for cls in ("dog", "cat"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                img = Image.fromarray(pixels)
                if i == 0:
                    img.save(d / f"{i}.png")
                elif i == 1:
                    img.save(d / f"{i}.JPG", quality=95)
                else:
                    img.convert("L").save(d / f"{i}.bmp")
            (d / "notes.txt").write_text("not an image")


def collect(loader):
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


# ---- IDX ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_shapes_sizes_and_labels_round_trip(tmp_path, gz):
    arrays = make_idx_dir(tmp_path, gz)
    cfg = DataConfig(root=str(tmp_path), batch_size=4, test_batch_size=5, augment=False)
    b = build_data(cfg)
    assert (b.name, b.num_classes, b.in_channels, b.image_size) == ("fashion_mnist", 10, 1, 28)
    assert (b.train_size, b.test_size) == (20, 7)
    assert (len(b.train), len(b.test)) == (5, 2)
    assert (b.train.dataset_size, b.test.dataset_size) == (20, 7)
    batches = list(b.test)
    assert [tuple(x.shape) for x, _ in batches] == [(5, 1, 28, 28), (2, 1, 28, 28)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
    x, y = collect(b.test)
    images, labels = arrays["test"]
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    assert torch.equal(x, torch.from_numpy(norm_ref(images, 0.2860, 0.3530))[:, None])
    # Train without augmentation: exactly the stored images, in the loader's order.
    x, y = collect(b.train)
    idx = b.train.indices().numpy()
    images, labels = arrays["train"]
    assert torch.equal(y, torch.from_numpy(labels[idx].astype(np.int64)))
    assert torch.equal(x, torch.from_numpy(norm_ref(images[idx], 0.2860, 0.3530))[:, None])


def test_normalization_exact_on_known_pixels(tmp_path):
    arrays = make_idx_dir(tmp_path, gz=False)
    images, labels = arrays["test"]
    images[0, 0, 0], images[0, 5, 7] = 0, 200
    write_idx(tmp_path / IDX_NAMES["test"][0], images, gz=False)
    for name, mean, std in (("fashion_mnist", 0.2860, 0.3530), ("mnist", 0.1307, 0.3081)):
        x, _ = next(iter(build_data(DataConfig(name, str(tmp_path), batch_size=4)).test))
        assert x[0, 0, 0, 0].item() == float(norm_ref(0, mean, std))
        assert x[0, 0, 5, 7].item() == float(norm_ref(200, mean, std))
        assert x[0, 0, 0, 0].item() == float(np.float32(-mean) / np.float32(std))


def test_fashion_and_mnist_augmentation_differ_only_in_flip(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    fm = build_data(DataConfig(root=str(tmp_path), batch_size=4))
    mn = build_data(DataConfig(name="mnist", root=str(tmp_path), batch_size=4))
    assert fm.train.augment == CropFlip(pad=2, flip=True)
    assert mn.train.augment == CropFlip(pad=2, flip=False)
    assert fm.test.augment is None and mn.test.augment is None


def test_idx_bad_magic_names_the_file(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    path = tmp_path / IDX_NAMES["train"][0]
    data = bytearray(path.read_bytes())
    data[3] = 0x01  # the labels magic in an images file
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(root=str(tmp_path)))
    assert str(path) in str(e.value)
    assert "0x00000801" in str(e.value) and "expected 0x00000803" in str(e.value)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_truncated_file_names_the_file(tmp_path, gz):
    arrays = make_idx_dir(tmp_path, gz)
    images, _ = arrays["test"]
    data = idx_bytes(images)[:-10]
    path = tmp_path / IDX_NAMES["test"][0]
    if gz:
        path = path.with_name(path.name + ".gz")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(root=str(tmp_path)))
    assert str(path) in str(e.value)
    assert f"expected {16 + 7 * 28 * 28} bytes, got {16 + 7 * 28 * 28 - 10}" in str(e.value)


def test_idx_truncated_gzip_stream_names_the_file(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    path = tmp_path / (IDX_NAMES["train"][1] + ".gz")
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(root=str(tmp_path)))
    assert f"cannot read IDX file {path}" in str(e.value)


def test_idx_missing_file_and_directory(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    (tmp_path / IDX_NAMES["test"][1]).unlink()
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(root=str(tmp_path)))
    assert str(tmp_path / IDX_NAMES["test"][1]) in str(e.value)
    assert "set `data.root`" in str(e.value) and "apt-get" not in str(e.value)
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(name="mnist", root=str(missing)))
    assert str(missing / IDX_NAMES["train"][0]) in str(e.value)
    assert "directory does not exist" in str(e.value)


def test_default_fashion_root_missing_suggests_the_debian_package(tmp_path, monkeypatch):
    entry = DATASETS.entry("fashion_mnist")
    moved = dataclasses.replace(entry.obj, default_root=str(tmp_path / "absent"))
    monkeypatch.setitem(DATASETS._entries, "fashion_mnist", dataclasses.replace(entry, obj=moved))
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig())
    msg = str(e.value)
    assert str(tmp_path / "absent" / IDX_NAMES["train"][0]) in msg
    assert "install Debian's `dataset-fashion-mnist` package" in msg
    assert "(`apt-get install dataset-fashion-mnist`)" in msg
    assert "set `data.root` to a directory holding the fashion_mnist IDX files" in msg


def test_idx_labels_out_of_range(tmp_path):
    arrays = make_idx_dir(tmp_path, gz=False)
    _, labels = arrays["train"]
    labels[3] = 10
    write_idx(tmp_path / IDX_NAMES["train"][1], labels, gz=False)
    with pytest.raises(ConfigError, match=r"go up to 10; expected labels in \[0, 9\]"):
        build_data(DataConfig(root=str(tmp_path)))


def one_line_error(cfg) -> str:
    with pytest.raises(ConfigError) as e:
        build_data(cfg)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_idx_with_no_images_or_no_pixels_is_refused(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    write_idx(tmp_path / IDX_NAMES["test"][0], np.zeros((0, 28, 28), np.uint8), gz=False)
    write_idx(tmp_path / IDX_NAMES["test"][1], np.zeros((0,), np.uint8), gz=False)
    msg = one_line_error(DataConfig(root=str(tmp_path)))
    assert msg == (
        f"IDX file {tmp_path / IDX_NAMES['test'][0]} holds no data: header says dims (0, 28, 28); "
        "expected at least one image of at least 1x1 pixels"
    )
    write_idx(tmp_path / IDX_NAMES["test"][0], np.zeros((2, 0, 28), np.uint8), gz=False)
    assert "holds no data: header says dims (2, 0, 28)" in one_line_error(
        DataConfig(root=str(tmp_path))
    )


def test_idx_counts_and_sizes_that_disagree_are_one_line(tmp_path):
    arrays = make_idx_dir(tmp_path, gz=False)
    images, labels = arrays["train"]
    write_idx(tmp_path / IDX_NAMES["train"][1], labels[:-1], gz=False)
    assert one_line_error(DataConfig(root=str(tmp_path))) == (
        f"IDX files disagree on the number of samples: {tmp_path / IDX_NAMES['train'][0]} "
        f"holds {len(labels)} images, {tmp_path / IDX_NAMES['train'][1]} {len(labels) - 1} "
        "labels; expected one label per image"
    )
    write_idx(tmp_path / IDX_NAMES["train"][1], labels, gz=False)
    n = images.shape[0]
    write_idx(tmp_path / IDX_NAMES["train"][0], np.zeros((n, 14, 14), np.uint8), gz=False)
    test_h, test_w = arrays["test"][0].shape[1:]
    assert one_line_error(DataConfig(root=str(tmp_path))) == (
        f"IDX images in {tmp_path} differ in size between splits: train 14x14, test "
        f"{test_h}x{test_w}; expected one image size"
    )


def test_cifar_split_with_no_images_and_bad_labels(tmp_path):
    base = tmp_path / "c"
    make_cifar10(base, n_test=0, protocol=4)
    assert one_line_error(DataConfig(name="cifar10", root=str(base))) == (
        f"CIFAR test files in {base} hold no images (test_batch); expected at least one"
    )
    make_cifar10(base)
    write_cifar_batch(base / "test_batch", np.zeros((2, 3072), np.uint8), [0, 1], b"labels")
    d = pickle.loads((base / "test_batch").read_bytes())
    d[b"labels"] = ["cat", "dog"]
    (base / "test_batch").write_bytes(pickle.dumps(d, protocol=2))
    assert one_line_error(DataConfig(name="cifar10", root=str(base))) == (
        f"CIFAR file {base / 'test_batch'}: 'labels' must be a list of integer labels"
    )


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    b = build_data(DataConfig(batch_size=128))
    assert (b.train_size, b.test_size, b.image_size, b.num_classes) == (60000, 10000, 28, 10)
    assert (len(b.train), len(b.test)) == (468, 20)
    assert torch.equal(torch.bincount(b.train.labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(b.test.labels), torch.full((10,), 1000))
    assert b.train.images.shape == (60000, 1, 28, 28) and b.train.images.dtype == torch.uint8


# ---- augmentation, determinism, subsets, shards ------------------------------------------------


def test_crop_flip_matches_a_per_sample_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 9, 7), generator=g, dtype=torch.uint8)
    aug = CropFlip(pad=3, flip=True)
    dy, dx, mirror = aug.draw(6, seed=5, epoch=2)
    out = aug.apply(x, dy, dx, mirror)
    for i in range(6):
        ref = F.pad(x[i], (3, 3, 3, 3))[:, dy[i] : dy[i] + 9, dx[i] : dx[i] + 7]
        ref = ref.flip(-1) if mirror[i] else ref
        assert torch.equal(out[i], ref)
    assert out.dtype == torch.uint8 and out.is_contiguous()
    _, _, no_mirror = CropFlip(pad=3, flip=False).draw(6, seed=5, epoch=2)
    assert not no_mirror.any()


def test_same_seed_and_epoch_give_identical_batches(tmp_path):
    make_idx_dir(tmp_path, gz=False, n_train=40)
    cfg = DataConfig(root=str(tmp_path), batch_size=8)
    a, b = build_data(cfg, seed=3), build_data(cfg, seed=3)
    for epoch in (0, 1):
        a.train.set_epoch(epoch)
        b.train.set_epoch(epoch)
        xa, ya = collect(a.train)
        xb, yb = collect(b.train)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.train.set_epoch(0)
    x0, _ = collect(a.train)
    order0 = a.train.indices()
    a.train.set_epoch(1)
    x1, _ = collect(a.train)
    assert not torch.equal(order0, a.train.indices())
    assert not torch.equal(x0, x1)
    c = build_data(cfg, seed=4)
    assert not torch.equal(order0, c.train.indices())
    # Augmentation is on: some train image differs from its stored, merely normalized, version.
    plain = Normalize(mean=(0.2860,), std=(0.3530,))(a.train.images[a.train.indices()])
    assert not torch.equal(x1, plain)


def test_augmentation_of_a_sample_does_not_depend_on_world_size():
    images = torch.randint(0, 256, (12, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    images = images.to(torch.uint8)
    common = dict(
        batch_size=3,
        train=True,
        normalize=Normalize(mean=(0.5,), std=(0.25,)),
        augment=CropFlip(pad=2, flip=True),
        seed=7,
    )
    whole = TensorLoader(images, torch.arange(12), **common)
    whole.set_epoch(4)
    xw, yw = collect(whole)
    by_index = {int(i): x for i, x in zip(yw, xw)}
    for rank in (0, 1):
        part = TensorLoader(images, torch.arange(12), rank=rank, world_size=2, **common)
        part.set_epoch(4)
        for x, y in zip(*collect(part)):
            assert torch.equal(x, by_index[int(y)])


def test_augment_false_keeps_train_images_unchanged(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    b = build_data(DataConfig(root=str(tmp_path), batch_size=4, augment=False))
    assert b.train.augment is None
    b.train.set_epoch(2)
    x, _ = collect(b.train)
    assert torch.equal(x, b.train.normalize(b.train.images[b.train.indices()]))


def test_test_loader_is_neither_shuffled_nor_augmented(tmp_path):
    make_idx_dir(tmp_path, gz=False, n_test=9)
    b = build_data(DataConfig(root=str(tmp_path), batch_size=4, test_batch_size=4))
    b.test.set_epoch(0)
    x0, y0 = collect(b.test)
    b.test.set_epoch(5)
    x5, y5 = collect(b.test)
    assert torch.equal(x0, x5) and torch.equal(y0, y5)
    assert torch.equal(b.test.indices(), torch.arange(9))
    assert torch.equal(x0, b.test.normalize(b.test.images))


def test_train_subset(tmp_path):
    arrays = make_idx_dir(tmp_path, gz=False)
    b = build_data(DataConfig(root=str(tmp_path), train_subset=8, batch_size=4), seed=1)
    keep = subset_indices(20, 8, seed=1)
    assert (b.train_size, b.train.dataset_size, len(b.train), b.test_size) == (8, 8, 2, 7)
    assert torch.equal(b.train.images[:, 0], torch.from_numpy(arrays["train"][0])[keep])
    assert set(keep.tolist()) < set(subset_indices(20, 12, seed=1).tolist())
    assert len(set(keep.tolist())) == 8
    with pytest.raises(ConfigError, match="data.train_subset=21 exceeds the 20 training samples"):
        build_data(DataConfig(root=str(tmp_path), train_subset=21, batch_size=4))


def test_two_rank_shards_are_disjoint_and_cover():
    n = 12
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    norm = Normalize(mean=(0.0,), std=(1.0,))
    seen = []
    for rank in (0, 1):
        loader = TensorLoader(
            images,
            torch.arange(n),
            batch_size=3,
            train=True,
            normalize=norm,
            seed=2,
            rank=rank,
            world_size=2,
        )
        loader.set_epoch(3)
        _, y = collect(loader)
        assert (len(loader), loader.num_samples, len(y)) == (2, 6, 6)
        seen.append(set(y.tolist()))
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == set(range(n))
    # The test split: unpadded strided shards that cover an odd-sized set exactly.
    tests = [
        collect(
            TensorLoader(
                images[:11],
                torch.arange(11),
                batch_size=4,
                train=False,
                normalize=norm,
                rank=r,
                world_size=2,
            )
        )[1]
        for r in (0, 1)
    ]
    assert tests[0].tolist() == [0, 2, 4, 6, 8, 10] and tests[1].tolist() == [1, 3, 5, 7, 9]


def test_build_data_shards_per_rank():
    cfg = DataConfig(name="synthetic", batch_size=16, synthetic_train=100, synthetic_test=9)
    bundles = [build_data(cfg, seed=0, rank=r, world_size=2) for r in (0, 1)]
    for b in bundles:
        assert (b.train_size, b.train.num_samples, len(b.train)) == (100, 50, 3)
    a, c = (set(b.train.indices().tolist()) for b in bundles)
    assert a.isdisjoint(c) and len(a) == len(c) == 48
    assert (bundles[0].test.num_samples, bundles[1].test.num_samples) == (5, 4)
    with pytest.raises(ConfigError, match=r"rank must be an integer in \[0, 1\], got 2"):
        build_data(cfg, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="world_size must be an integer >= 1, got 0"):
        build_data(cfg, world_size=0)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 50), world=st.integers(1, 5), epoch=st.integers(0, 3), seed=st.integers(0, 9)
)
def test_epoch_indices_partition_property(n, world, epoch, seed):
    train = [
        epoch_indices(n, train=True, seed=seed, epoch=epoch, rank=r, world_size=world)
        for r in range(world)
    ]
    assert {len(t) for t in train} == {n // world}
    flat = torch.cat(train).tolist()
    assert len(set(flat)) == len(flat) == n - n % world and set(flat) <= set(range(n))
    test = [
        epoch_indices(n, train=False, seed=seed, epoch=epoch, rank=r, world_size=world)
        for r in range(world)
    ]
    assert sorted(torch.cat(test).tolist()) == list(range(n))


def test_batch_size_larger_than_the_shard_is_refused():
    cfg = DataConfig(name="synthetic", synthetic_train=100, batch_size=64)
    with pytest.raises(ConfigError, match="data.batch_size=64 is larger than the 50 training"):
        build_data(cfg, world_size=2)


# ---- CIFAR -------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("parent", [False, True], ids=["batches-dir", "parent-dir"])
def test_cifar10_round_trip(tmp_path, protocol, parent):
    arrays = make_cifar10(tmp_path / "cifar-10-batches-py", protocol=protocol)
    root = tmp_path if parent else tmp_path / "cifar-10-batches-py"
    b = build_data(DataConfig(name="cifar10", root=str(root), batch_size=5, test_batch_size=3))
    assert (b.num_classes, b.in_channels, b.image_size, b.train_size, b.test_size) == (
        10,
        3,
        32,
        15,
        4,
    )
    assert b.class_names[0] == "airplane" and len(b.class_names) == 10
    assert b.train.images.shape == (15, 3, 32, 32)
    assert torch.equal(b.train.labels, torch.from_numpy(arrays["train"][1]))
    x, y = collect(b.test)
    data, labels = arrays["test"]
    assert x.shape == (4, 3, 32, 32) and torch.equal(y, torch.from_numpy(labels))
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    # Row layout: 1024 red values, then green, then blue; each plane row-major 32x32.
    for c, (row, col) in ((0, (0, 0)), (0, (0, 1)), (1, (0, 0)), (2, (31, 5))):
        v = data[0, c * 1024 + row * 32 + col]
        assert x[0, c, row, col].item() == float(norm_ref(v, mean[c], std[c]))
    assert b.train.augment == CropFlip(pad=4, flip=True)


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(3)
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    x_train = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
    y_train = np.array([0, 99, 42, 7, 50, 13])
    write_cifar_batch(base / "train", x_train, y_train, b"fine_labels")
    write_cifar_batch(base / "test", x_train[:2], y_train[:2], b"fine_labels")
    b = build_data(DataConfig(name="cifar100", root=str(tmp_path), batch_size=2))
    assert (b.num_classes, b.train_size, b.test_size) == (100, 6, 2)
    assert b.train.labels.tolist() == [0, 99, 42, 7, 50, 13]
    assert torch.equal(b.train.images, torch.from_numpy(x_train).reshape(6, 3, 32, 32))
    x, _ = next(iter(b.test))
    v = x_train[1, 2 * 1024 + 3 * 32 + 4]
    assert x[1, 2, 3, 4].item() == float(norm_ref(v, 0.4409, 0.2762))


def test_cifar_refuses_a_malicious_global(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    make_cifar10(base)
    marker = tmp_path / "pwned"
    path = base / "data_batch_3"
    path.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(name="cifar10", root=str(base)))
    assert str(path) in str(e.value) and "refusing to load global 'os.system'" in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(S'1+1'\ntR.",
        b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.",
        b"cnumpy\nload\n(S'x'\ntR.",
    ],
    ids=["eval", "codec", "numpy-load"],
)
def test_restricted_unpickler_refuses_other_calls(payload):
    import io

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()


def test_cifar_bad_contents(tmp_path):
    base = tmp_path / "c"
    make_cifar10(base)
    (base / "data_batch_2").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ConfigError, match="holds a list; expected a dict"):
        build_data(DataConfig(name="cifar10", root=str(base)))
    write_cifar_batch(base / "data_batch_2", np.zeros((2, 100), np.uint8), [1, 2], b"labels")
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(name="cifar10", root=str(base)))
    assert str(base / "data_batch_2") in str(e.value)
    assert "expected (N, 3072), got (2, 100)" in str(e.value)
    make_cifar10(base)
    (base / "test_batch").unlink()
    with pytest.raises(ConfigError, match="missing CIFAR file .*test_batch"):
        build_data(DataConfig(name="cifar10", root=str(base)))
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(name="cifar10", root=str(tmp_path / "none")))
    assert str(tmp_path / "none" / "cifar-10-batches-py" / "data_batch_1") in str(e.value)


# ---- image folders -----------------------------------------------------------------------------


def test_image_folder_shapes_labels_and_eval_transform(tmp_path):
    make_image_folder(tmp_path)
    cfg = DataConfig(
        name="imagefolder", root=str(tmp_path), image_size=16, batch_size=4, test_batch_size=3
    )
    b = build_data(cfg)
    assert (b.num_classes, b.in_channels, b.image_size) == (2, 3, 16)
    assert b.class_names == ("cat", "dog")
    assert (b.train_size, b.test_size, len(b.train), len(b.test)) == (6, 4, 1, 2)
    x, y = collect(b.test)
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 1, 1]
    # Eval transform by hand: short side 30 -> round(16 / 0.875) = 18, long 40 -> 24; center crop.
    with Image.open(tmp_path / "val" / "cat" / "0.png") as f:
        ref = f.convert("RGB").resize((24, 18), Image.Resampling.BILINEAR).crop((4, 1, 20, 17))
    ref = torch.from_numpy(np.array(ref)).permute(2, 0, 1)[None]
    assert torch.equal(x[:1], IMAGENET_NORMALIZE(ref))
    xt, yt = collect(b.train)
    assert xt.shape == (4, 3, 16, 16) and yt.dtype == torch.int64


def test_image_folder_determinism_and_workers(tmp_path):
    make_image_folder(tmp_path)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), image_size=12, batch_size=3)
    a = build_data(cfg, seed=1)
    a.train.set_epoch(2)
    x0, y0 = collect(a.train)
    parallel = build_data(dataclasses.replace(cfg, num_workers=2), seed=1)
    parallel.train.set_epoch(2)
    x1, y1 = collect(parallel.train)
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    a.train.set_epoch(3)
    x3, _ = collect(a.train)
    assert not torch.equal(x0, x3)


@pytest.mark.parametrize("workers", [0, 2])
def test_image_folder_undecodable_image_is_a_one_line_config_error(tmp_path, workers):
    make_image_folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "0.png"
    bad.write_bytes(b"not a png")
    cfg = DataConfig(
        name="imagefolder", root=str(tmp_path), image_size=8, batch_size=6, num_workers=workers
    )
    with pytest.raises(ConfigError) as e:
        collect(build_data(cfg).train)
    assert str(e.value) == f"cannot decode image {bad}: cannot identify image file '{bad}'"


def test_image_folder_class_mismatch_and_missing_split(tmp_path):
    make_image_folder(tmp_path)
    (tmp_path / "val" / "bird").mkdir()
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(name="imagefolder", root=str(tmp_path), batch_size=2))
    assert "same class folders; only in train: none, only in val: ['bird']" in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        build_data(DataConfig(name="imagefolder", root=str(tmp_path / "x"), batch_size=2))


# ---- synthetic ---------------------------------------------------------------------------------


def test_synthetic_shapes_and_learnable_labels():
    cfg = DataConfig(
        name="synthetic",
        image_size=12,
        num_classes=4,
        channels=3,
        synthetic_train=64,
        synthetic_test=32,
        batch_size=16,
        augment=False,
    )
    b = build_data(cfg, seed=0)
    assert (b.num_classes, b.in_channels, b.image_size, b.train_size, b.test_size) == (
        4,
        3,
        12,
        64,
        32,
    )
    assert torch.equal(torch.bincount(b.train.labels), torch.full((4,), 16))
    x, y = collect(b.train)
    assert x.shape == (64, 3, 12, 12)
    means = torch.stack([x[y == k].mean(0) for k in range(4)])
    xt, yt = collect(b.test)
    pred = ((xt[:, None] - means[None]) ** 2).flatten(2).sum(-1).argmin(1)
    assert torch.equal(pred, yt)  # nearest class mean classifies every test image
    # The images come from a fixed seed, not the run seed.
    assert torch.equal(build_data(cfg, seed=9).train.images, b.train.images)


def test_synthetic_defaults():
    b = build_data(DataConfig(name="synthetic", batch_size=32))
    assert (b.in_channels, b.image_size, b.num_classes, b.train_size, b.test_size) == (
        1,
        28,
        10,
        512,
        128,
    )
    assert (len(b.train), len(b.test)) == (16, 1)
    assert b.train.augment == CropFlip(pad=2, flip=False)


# ---- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": 0}, "data.batch_size must be an integer >= 1, got 0"),
        ({"batch_size": True}, "data.batch_size must be an integer >= 1, got True"),
        ({"test_batch_size": -3}, "data.test_batch_size must be an integer >= 1, got -3"),
        ({"num_workers": -1}, "data.num_workers must be an integer >= 0, got -1"),
        ({"train_subset": 0}, "data.train_subset must be an integer >= 1, got 0"),
        ({"augment": "yes"}, "data.augment must be true or false, got 'yes'"),
        (
            {"name": "fashon_mnist"},
            "data.name: unknown dataset 'fashon_mnist' (did you mean 'fashion_mnist'?); "
            "choose from: ",
        ),
        ({"name": "cifar10"}, "data.root is required for dataset 'cifar10'"),
        (
            {"image_size": 32},
            "data.image_size=32 does not apply to dataset 'fashion_mnist'; "
            "only to: imagefolder, synthetic",
        ),
        ({"channels": 3}, "data.channels=3 does not apply to dataset 'fashion_mnist'"),
        (
            {"name": "synthetic", "num_classes": 1},
            "data.num_classes must be an integer >= 2, got 1",
        ),
        ({"name": "synthetic", "synthetic_test": 0}, "data.synthetic_test must be an integer"),
    ],
)
def test_validate_errors(changes, message):
    cfg = DataConfig(**changes)
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert message in str(e.value)


def test_validate_accepts_aliases_and_defaults():
    DataConfig().validate()
    DataConfig(name="Fashion-MNIST").validate()
    DataConfig(name="cifar-10", root="/data").validate()
    DataConfig(name="synthetic", image_size=8, channels=3, num_classes=2).validate()


def test_list_datasets():
    names = [n for n, _ in list_datasets()]
    assert names == [
        "fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic",
        "synthetic-tokens",
    ]  # fmt: skip
    assert all(h and "\n" not in h for _, h in list_datasets())
