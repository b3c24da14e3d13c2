import json

import pytest
import yaml
from conftest import first_step, tiny_recipe, train_cli

from sparsegrain import cli
from sparsegrain.analysis.storage import BitWidths, layer_storage
from sparsegrain.core.io import load_tensors

RECIPE = tiny_recipe(
    first_step("kernel"),
    epochs=1,
    seed=0,
    train_size=128,
    test_size=64,
    test_batch=64,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    assert train_cli("--recipe", path, "--out", root / "sparse") == 0
    assert (
        train_cli("--recipe", path, "--out", root / "dense", "--set", "sparsity.method=dense") == 0
    )
    return root


def test_analyze_run_writes_every_part(runs, capsys):
    args = [
        "analyze",
        "--run",
        str(runs / "sparse"),
        "--attacks",
        "fgsm,pgd",
        "--epsilons",
        "0,0.1",
        "--pgd-steps",
        "2",
        "--baseline",
        str(runs / "dense"),
        "--sensitivity",
        "--max-batches",
        "1",
        "--no-progress",
    ]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "OUR RECONSTRUCTION" in text and "storage" in text
    result = json.loads((runs / "sparse" / "analysis.json").read_text())
    summary = json.loads((runs / "sparse" / "summary.json").read_text())
    assert result["accuracy"]["top1"] == pytest.approx(summary["top1"])
    # structures come from the run's summary: pruned layers "kernel", the rest dense (None)
    assert result["structures"] == {
        r["name"]: (None if r["structure"] == "dense" else "kernel") for r in summary["layers"]
    }
    # per-layer storage equals the storage module on the saved weights
    weights, _ = load_tensors(runs / "sparse" / "model.safetensors")
    row = next(r for r in result["storage"]["layers"] if r["name"] == "layer1.0.conv1")
    direct = layer_storage(weights["layer1.0.conv1.weight"], "kernel", BitWidths())
    assert row["best"] == direct["best"] and row[row["best"]] == direct[direct["best"]]
    assert result["flops"]["total"]["effective"] < result["flops"]["total"]["dense"]
    rob = result["robustness"]
    assert set(rob) == {"model", "baseline"} and set(rob["model"]) == {"fgsm", "pgd"}
    assert rob["model"]["fgsm"]["0.0"] == rob["model"]["pgd"]["0.0"]
    assert set(result["sensitivity"]["curves"]) == {
        r["name"] for r in summary["layers"] if r["structure"] != "dense"
    }


def test_analyze_weights_file_with_a_recipe(runs, tmp_path):
    out = tmp_path / "a.json"
    assert (
        cli.main(
            [
                "analyze",
                "--weights",
                str(runs / "sparse" / "model.safetensors"),
                "--recipe",
                str(runs / "recipe.yaml"),
                "--structure",
                "kernel",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["model"] == "resnet_tiny"
    # without a summary, every layer holding zeros is taken to have --structure
    assert result["structures"]["layer1.0.conv1"] == "kernel"
    assert result["structures"]["conv1"] is None


def test_analyze_bad_input(runs, capsys):
    assert cli.main(["analyze", "--run", str(runs / "sparse"), "--attacks", "cw"]) == 2
    assert "unknown attack 'cw'" in capsys.readouterr().err
    assert cli.main(["analyze", "--run", str(runs / "sparse"), "--epsilons", "a,b"]) == 2
    assert "--epsilons: expected comma-separated numbers" in capsys.readouterr().err


def test_report_draws_every_plot(runs, tmp_path):
    from sparsegrain.analysis.report import write_report

    assert cli.main(["analyze", "--run", str(runs / "sparse"), "--no-progress"]) == 0
    md = write_report([str(runs / "sparse"), str(runs / "dense")], tmp_path / "rep")
    text = md.read_text()
    for png in (
        "accuracy_vs_sparsity.png",
        "compression.png",
        "memory_refs.png",
        "layers_sparse.png",
        "layers_dense.png",
        "masks_sparse.png",
    ):
        assert f"({png})" in text
        assert (tmp_path / "rep" / png).read_bytes()[:4] == b"\x89PNG"
    assert "| sparse | campfire | kernel | 0.50 |" in text


def test_accuracy_series_groups_methods_structures_and_seeds():
    from sparsegrain.analysis.report import accuracy_series

    def run(method, structure, target, sparsity, top1):
        return {"summary": dict(method=method, structure=structure, target=target,
                                sparsity=sparsity, top1=top1)}  # fmt: skip

    runs = [
        run("dense", "dense", 0.0, 0.0, 93.0),
        run("campfire", "fine", 0.9, 0.90, 92.0),
        run("campfire", "fine", 0.9, 0.88, 91.0),  # a second seed of the same target
        run("campfire", "fine", 0.5, 0.50, 93.5),
        run("feather", "fine", 0.9, 0.90, 92.5),
        run("dense", "dense", 0.0, 0.0, 93.2),
    ]
    l2 = run("campfire", "fine", 0.9, 0.90, 92.4)
    l2["summary"]["score"] = "l2"  # another ranking: its own line, not a third seed
    l1 = run("campfire", "fine", 0.5, 0.50, 93.5)
    l1["summary"]["score"] = "l1"  # the default, as runs without the key
    glob = run("campfire", "fine", 0.9, 0.90, 92.8)
    glob["summary"].update(scope="global", score="l2")  # one threshold: another configuration
    layer = run("campfire", "fine", 0.5, 0.50, 93.5)
    layer["summary"]["scope"] = "layer"  # Campfire's default, as runs without the key
    feather = run("feather", "fine", 0.9, 0.90, 92.5)
    feather["summary"]["scope"] = "global"  # Feather's default: no label
    runs += [l2, l1, glob, layer, feather]
    dense, series = accuracy_series(runs)
    assert dense == [93.0, 93.2]
    assert list(series) == [
        "campfire (global, l2): fine", "campfire (l2): fine", "campfire: fine", "feather: fine"
    ]  # fmt: skip
    assert series["campfire (global, l2): fine"] == [(0.90, 92.8, 92.8, 92.8)]
    assert series["campfire (l2): fine"] == [(0.90, 92.4, 92.4, 92.4)]
    assert series["campfire: fine"] == [(0.50, 93.5, 93.5, 93.5), (0.89, 91.5, 91.0, 92.0)]
    assert series["feather: fine"] == [(0.90, 92.5, 92.5, 92.5)]  # two runs of 92.5


def test_mask_picture_layout():
    import torch

    from sparsegrain.analysis.report import mask_picture

    mask = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    mask[0, 1] = True
    mask[1, 0, 0, 0] = True
    img = mask_picture(mask)
    h = 0.5
    assert img.tolist() == [
        [0, 0, h, 1, 1],
        [0, 0, h, 1, 1],
        [h, h, h, h, h],
        [1, 0, h, 0, 0],
        [0, 0, h, 0, 0],
    ]


@pytest.mark.slow
def test_sweep_grid_points_and_a_tiny_sweep(runs, tmp_path, capsys):
    from sparsegrain.train.sweep import grid_points

    pts = grid_points(["dense", "campfire"], ["fine", "nm:2:4"], [0.5])
    assert [n for n, _ in pts] == ["dense", "campfire-fine-0.5", "campfire-nm_2_4-0.5"]
    assert pts[2][1] == [
        "sparsity.method=campfire",
        "sparsity.structure=nm:2:4",
        "sparsity.target=0.5",
    ]
    out = tmp_path / "sw"
    assert (
        cli.main(
            [
                "sweep",
                "--recipe",
                str(runs / "recipe.yaml"),
                "--out",
                str(out),
                "--methods",
                "campfire",
                "--structures",
                "fine,filter",
                "--targets",
                "0.5",
                "--jobs",
                "2",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "campfire-fine-0.5" in table and "campfire-filter-0.5" in table
    results = json.loads((out / "sweep.json").read_text())
    assert [results[k]["structure"] for k in results] == ["fine", "filter"]
    assert all(r["sparsity"] == 0.5 for r in results.values())


def test_a_baseline_on_other_test_data_is_refused_before_any_evaluation(runs, tmp_path, capsys):
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    other = tmp_path / "other"
    sets = ["--set", "sparsity.method=dense", "--set", "data.image_size=10"]
    assert train_cli("--recipe", path, "--out", other, *sets) == 0
    before = sorted(p.name for p in (runs / "sparse").iterdir())
    capsys.readouterr()
    args = ["analyze", "--run", runs / "sparse", "--attacks", "fgsm", "--baseline", other]
    assert cli.main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"sparsegrain: error: --baseline {other}: its test data differs from the analyzed run's "
        "(data.image_size: 10 against 12); a baseline is the same data trained dense"
    ]
    assert sorted(p.name for p in (runs / "sparse").iterdir()) == before  # no analysis.json


def test_a_run_path_that_is_a_symlink_loop_is_one_line(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert cli.main(["analyze", "--run", str(loop)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "symbolic link" in err[0] and str(loop) in err[0]
