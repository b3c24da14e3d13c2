"""Shared test helpers: a CLI run, a run killed after an epoch then resumed, trained-looking
BatchNorm statistics, subset ranks of the compressed format."""

import math

import numpy as np
import pytest
import torch

from sparsegrain import cli
from sparsegrain.core.io import load_tensors
from sparsegrain.runs import files as runfiles


def randomize_bn(model, seed=0):
    """BN statistics like a trained model's: the shift of a zeroed filter is not 0."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.5
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def train_cli(*args) -> int:
    """``sparsegrain train ARGS`` in-process; returns the exit status."""
    return cli.main(["train", *map(str, args)])


def assert_same_files(a_dir, b_dir, name="model.safetensors"):
    a, _ = load_tensors(a_dir / name)
    b, _ = load_tensors(b_dir / name)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def crash_and_resume(monkeypatch):
    """Run ``train ARGS --out OUT`` stopping right after epoch ``at``'s checkpoint, check it
    stopped (status 130, no summary), then ``train --out OUT --resume``."""

    def go(out, *args, at=1):
        real_save = runfiles.save_checkpoint

        def save_then_die(out_, model, opt, sp, epoch, *rest):
            real_save(out_, model, opt, sp, epoch, *rest)
            if epoch == at:
                raise KeyboardInterrupt

        monkeypatch.setattr(runfiles, "save_checkpoint", save_then_die)
        assert train_cli(*args, "--out", out) == 130
        monkeypatch.setattr(runfiles, "save_checkpoint", real_save)
        assert not (out / "summary.json").exists()
        assert train_cli("--out", out, "--resume") == 0

    return go


def first_step(structure="filter", target=0.5, **kw) -> dict:
    """A Campfire sparsity section whose masks are set at the first step (epoch 0.5 = end, one
    step per update) and frozen from then on."""
    base = {"method": "campfire", "structure": structure, "target": target}
    return {**base, "start": 0, "end": 0.5, "frequency": 1, **kw}


def tiny_recipe(sparsity=None, *, epochs=1, seed=0, train_size=128, test_size=64, test_batch=64):
    """The tests' run recipe: resnet_tiny on 12x12 synthetic data, one thread, no progress bar."""
    return {
        "model": {"name": "resnet_tiny"},
        "data": {
            "name": "synthetic",
            "batch_size": 64,
            "test_batch_size": test_batch,
            "synthetic_train": train_size,
            "synthetic_test": test_size,
            "image_size": 12,
        },
        "train": {"epochs": epochs, "lr": 0.05, "progress": False, "seed": seed, "threads": 1},
        "sparsity": sparsity or {"method": "dense"},
    }


def colex_rank(row) -> int:
    """The colexicographic rank of ascending positions, ``sum_i C(c_i, i + 1)``."""
    return sum(math.comb(int(c), i + 1) for i, c in enumerate(row))


def stretched_subsets(g: int, n: int, rng) -> np.ndarray:
    """Random subsets and ones that stretch the row windows: runs at either end, one cluster,
    a sparse start and a dense end, the first and the last subset."""
    rows = [np.sort(rng.permutation(g)[:n]) for _ in range(6)]
    k, dense = int(rng.integers(0, g - n + 1)), n - n // 4
    rows += [np.arange(n), np.arange(g - n, g), np.arange(k, k + n)]
    rows += [np.concatenate([np.arange(n // 2), np.arange(g - (n - n // 2), g)])]
    sparse = rng.choice(g - dense, n // 4, replace=False)
    rows += [np.sort(np.concatenate([sparse, np.arange(g - dense, g)]))]
    return np.stack(rows).astype(np.int64)
