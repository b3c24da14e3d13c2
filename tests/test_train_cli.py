import json

import pytest
import torch
import yaml
from conftest import assert_same_files, tiny_recipe
from conftest import train_cli as train

from sparsegrain import cli
from sparsegrain.core.io import load_tensors
from sparsegrain.models import create_model

RECIPE = tiny_recipe(
    {
        "method": "campfire",
        "structure": "kernel-quota",
        "target": 0.5,
        "start": 0.25,
        "end": 1.5,  # still ramping when the resume test stops after epoch 1
        "frequency": 2,
    },
    epochs=2,
    seed=3,
    train_size=256,
    test_size=128,
    test_batch=128,
)


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def test_train_writes_the_run_directory(tmp_path, recipe_file, capsys):
    out = tmp_path / "run"
    assert train("--recipe", recipe_file, "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("top1", "top5", "epochs", "method", "structure", "sparsity", "layers", "wall_time"):
        assert key in summary
    assert summary["method"] == "campfire" and summary["structure"] == "kernel-quota"
    assert summary["score"] == "l1"  # what the masks ranked groups by (the default)
    assert summary["scope"] == "layer"  # a threshold per layer (Campfire's default)
    assert summary["epochs"] == 2
    pruned = [r for r in summary["layers"] if r["structure"] != "dense"]
    assert pruned and all(r["achieved"] == 0.5 for r in pruned)
    assert summary["sparsity"] == 0.5
    assert {"name", "shape", "structure", "target", "achieved"} <= set(summary["layers"][0])
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    # final weights: a plain state_dict of the architecture, with the masks' zeros
    weights, meta = load_tensors(out / "model.safetensors")
    fresh = create_model("resnet_tiny", num_classes=10, in_channels=1)
    fresh.load_state_dict(weights)
    masks, _ = load_tensors(out / "masks.safetensors")
    assert set(masks) == {r["name"] for r in pruned}
    for name, m in masks.items():
        w = weights[f"{name}.weight"]
        assert torch.all(w[~m] == 0)
    assert meta["model"]["name"] == "resnet_tiny"
    # the resolved recipe reproduces the run's settings
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["train"]["seed"] == 3 and saved["sparsity"]["frequency"] == 2
    assert "top-1" in capsys.readouterr().out
    assert cli.main(["eval", "--run", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["top1"] == pytest.approx(summary["top1"])


def test_resume_after_a_crash_gives_identical_weights(tmp_path, recipe_file, crash_and_resume):
    ref = tmp_path / "ref"
    assert train("--recipe", recipe_file, "--out", ref) == 0

    crashed = tmp_path / "crashed"
    crash_and_resume(crashed, "--recipe", recipe_file)
    assert_same_files(ref, crashed)
    assert_same_files(ref, crashed, "masks.safetensors")
    assert len((crashed / "metrics.jsonl").read_text().splitlines()) == 2


def test_dense_then_oneshot_from_init(tmp_path, recipe_file):
    dense = tmp_path / "dense"
    assert (
        train(
            "--recipe",
            recipe_file,
            "--out",
            dense,
            "--set",
            "sparsity.method=dense",
            "--set",
            "train.epochs=1",
        )
        == 0
    )
    summary = json.loads((dense / "summary.json").read_text())
    assert summary["sparsity"] == 0.0 and "score" not in summary and "scope" not in summary
    one = tmp_path / "one"
    assert (
        train(
            "--recipe",
            recipe_file,
            "--out",
            one,
            "--init",
            dense,
            "--set",
            "sparsity.method=oneshot",
            "--set",
            "sparsity.score=l2",
            "--set",
            "train.epochs=1",
        )
        == 0
    )
    summary = json.loads((one / "summary.json").read_text())
    assert summary["sparsity"] == 0.5 and summary["score"] == "l2"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--out", "{tmp}/x"], "--recipe FILE is required"),
        (["train", "--recipe", "{tmp}/nope.yaml", "--out", "{tmp}/x"], "recipe file not found"),
        (
            ["train", "--recipe", "{recipe}", "--out", "{tmp}/x", "--set", "train.lr"],
            "expected key.sub=value",
        ),
        (
            ["train", "--recipe", "{recipe}", "--out", "{tmp}/x", "--set", "train.lr=-1"],
            "train.lr: must be in (0, inf], got -1",
        ),
        (
            [
                "train",
                "--recipe",
                "{recipe}",
                "--out",
                "{tmp}/x",
                "--set",
                "sparsity.structure=windw",
            ],
            "did you mean 'window'?",
        ),
        (
            ["train", "--recipe", "{recipe}", "--out", "{tmp}", "--resume"],
            "no checkpoint.safetensors",
        ),
        (["train", "--recipe", "{recipe}", "--out", "{tmp}"], "directory is not empty"),
        (
            [
                "train",
                "--recipe",
                "{recipe}",
                "--out",
                "{tmp}/x",
                "--set",
                "sparsity.method=oneshot",
            ],
            "give --init",
        ),
        (["eval", "--run", "{tmp}/none"], "no recipe.yaml"),
        (["list", "model"], "invalid choice: 'model'"),
        (["trian"], "invalid choice: 'trian'"),
    ],
)
def test_bad_input_is_one_line_and_status_2(tmp_path, recipe_file, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, recipe=recipe_file) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "what, name",
    [
        ("models", "resnet50_v1_5"),
        ("datasets", "fashion_mnist"),
        ("structures", "kernel-quota"),
        ("methods", "campfire"),
    ],
)
def test_list(capsys, what, name):
    assert cli.main(["list", what]) == 0
    assert any(line.startswith(name) for line in capsys.readouterr().out.splitlines())
