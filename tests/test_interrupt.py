"""Killed runs resume to the same bits; a non-finite loss stops cleanly keeping the checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import assert_same_files, train_cli

from sparsegrain import cli
from sparsegrain.core.io import load_tensors

RECIPE = {
    "model": {"name": "resnet_tiny"},
    "data": {
        "name": "synthetic",
        "batch_size": 32,
        "synthetic_train": 1024,
        "synthetic_test": 64,
        "image_size": 12,
    },
    "train": {
        "epochs": 6,
        "lr": 0.05,
        "progress": False,
        "seed": 5,
        "threads": 1,
        "deterministic": True,
    },
    "sparsity": {
        "method": "campfire",
        "structure": "kernel",
        "target": 0.6,
        "start": 0.5,
        "end": 4.5,
        "frequency": 8,
    },
}


def start(*args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sparsegrain", "train", *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def epochs_done(out) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_gives_identical_bits(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    assert train_cli("--recipe", recipe, "--out", tmp_path / "ref") == 0
    out = tmp_path / "killed"
    proc = start("--recipe", recipe, "--out", out)
    kills = 0
    for wait_for, delay in ((1, 0.0), (3, 0.05), (4, 0.13)):
        while epochs_done(out) < wait_for and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        # a kill mid-write must leave a readable checkpoint behind
        _, meta = load_tensors(out / "checkpoint.safetensors")
        assert meta["epoch"] >= 1
        proc = start("--out", out, "--resume")
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    assert kills >= 2
    assert_same_files(tmp_path / "ref", out)
    assert_same_files(tmp_path / "ref", out, "masks.safetensors")
    ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    got = json.loads((out / "summary.json").read_text())
    assert got["top1"] == ref["top1"] and got["sparsity"] == ref["sparsity"]


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(
    tmp_path, monkeypatch, capsys
):
    recipe = tmp_path / "r.yaml"
    small = {**RECIPE, "data": {**RECIPE["data"], "synthetic_train": 128}}
    recipe.write_text(yaml.safe_dump(small))
    steps_per_epoch = 128 // 32

    class NaNAfter(torch.nn.CrossEntropyLoss):
        calls = 0

        def forward(self, out, y):
            NaNAfter.calls += 1
            loss = super().forward(out, y)
            return loss * float("nan") if NaNAfter.calls == steps_per_epoch + 2 else loss

    monkeypatch.setattr("sparsegrain.train.loop.nn.CrossEntropyLoss", NaNAfter)
    out = tmp_path / "nan"
    assert cli.main(["train", "--recipe", str(recipe), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "sparsegrain: stopped: non-finite loss (nan) at epoch 2, step 6; the last good "
        "checkpoint is kept (lower train.lr?)"
    )
    _, meta = load_tensors(out / "checkpoint.safetensors")
    assert meta["epoch"] == 1
    monkeypatch.undo()
    assert train_cli("--out", out, "--resume") == 0


@pytest.mark.parametrize("name", ["summary.json", "metrics.jsonl", "recipe.yaml"])
def test_files_are_written_whole(tmp_path, name):
    recipe = tmp_path / "r.yaml"
    small = {
        **RECIPE,
        "data": {**RECIPE["data"], "synthetic_train": 64},
        "train": {**RECIPE["train"], "epochs": 1},
    }
    recipe.write_text(yaml.safe_dump(small))
    assert train_cli("--recipe", recipe, "--out", tmp_path / "run") == 0
    leftovers = [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    assert (tmp_path / "run" / name).read_text().strip()
