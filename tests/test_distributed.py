"""Two processes with gloo on loopback, for every method: identical masks and final weights on
every rank, and the same masks as one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import train_cli

from sparsegrain.core.io import load_tensors

pytestmark = pytest.mark.slow  # torchrun with two processes: a few seconds a test

RECIPE = {
    "model": {"name": "mlp_tiny", "input_size": 8},  # no BatchNorm: ranks see the same model
    "data": {
        "name": "synthetic",
        "batch_size": 32,
        "test_batch_size": 64,
        "synthetic_train": 256,
        "synthetic_test": 64,
        "image_size": 8,
        "augment": False,
    },
    "train": {
        "epochs": 2,
        "lr": 0.05,
        "progress": False,
        "seed": 0,
        "threads": 1,
        "channels_last": False,
    },
}
METHODS = {
    "campfire": {
        "method": "campfire",
        "structure": "fine",
        "target": 0.6,
        "start": 0.25,
        "end": 1.5,
        "frequency": 2,
        "exclude": [],
    },
    "feather": {"method": "feather", "structure": "fine", "target": 0.6, "end": 1.0, "exclude": []},
    "oneshot": {"method": "oneshot", "structure": "fine", "target": 0.6, "exclude": []},
    "admm": {
        "method": "admm",
        "structure": "fine",
        "target": 0.6,
        "exclude": [],
        "admm_epochs": 1,
        "admm_periods": 1,
        "rho": 0.01,
    },
}


def torchrun(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "sparsegrain",
        "train",
        *map(str, args),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def failure(proc: subprocess.CompletedProcess) -> str:
    """What the ranks said before torchrun's own summary, which ends stderr."""
    lines = [ln for ln in proc.stderr.splitlines() if "torch/distributed/" not in ln]
    return "\n".join(lines if len(lines) <= 50 else lines[:40] + ["..."] + lines[-10:])


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    path = root / "dense.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "sparsity": {"method": "dense"}}))
    assert train_cli("--recipe", path, "--out", root / "dense") == 0
    return root


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_agree_with_each_other_and_with_one(dense, method):
    root = dense
    path = root / f"{method}.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "sparsity": METHODS[method]}))
    init = ["--init", root / "dense"] if method in ("oneshot", "admm") else []
    proc = torchrun("--recipe", path, "--out", root / f"{method}-2", *init)
    assert proc.returncode == 0, failure(proc)
    summary = json.loads((root / f"{method}-2" / "summary.json").read_text())
    ranks = summary["ranks"]
    assert ranks["world_size"] == 2
    assert len(set(ranks["mask_checksums"])) == 1
    assert len(set(ranks["weight_checksums"])) == 1
    assert train_cli("--recipe", path, "--out", root / f"{method}-1", *init) == 0
    two, _ = load_tensors(root / f"{method}-2" / "masks.safetensors")
    one, _ = load_tensors(root / f"{method}-1" / "masks.safetensors")
    assert two.keys() == one.keys() and two
    for name in one:
        assert torch.equal(one[name], two[name]), name
    assert (
        summary["sparsity"]
        == json.loads((root / f"{method}-1" / "summary.json").read_text())["sparsity"]
    )


def test_resume_with_another_world_size(dense):
    root = dense
    path = root / "campfire.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "sparsity": METHODS["campfire"]}))
    out = root / "resized"
    # one epoch on one process, then the rest on two
    assert train_cli("--recipe", path, "--out", out, "--set", "train.epochs=1") == 0
    (out / "summary.json").unlink()
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    saved["train"]["epochs"] = 2
    (out / "recipe.yaml").write_text(yaml.safe_dump(saved))
    proc = torchrun("--out", out, "--resume")
    assert proc.returncode == 0, failure(proc)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"]["world_size"] == 2 and summary["epochs"] == 2
    assert len(set(summary["ranks"]["mask_checksums"])) == 1
