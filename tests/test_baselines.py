"""PyTorch's own pruning tools as methods (torch-ao, torch-prune): the same masks as the
sparsegrain configurations they equal, resume, N:M, and what they refuse."""

import json

import pytest
import torch
import yaml
from conftest import assert_same_files, tiny_recipe, train_cli
from torch import nn

import sparsegrain
from sparsegrain.analysis.report import method_label
from sparsegrain.core.errors import ConfigError

RAMP = {"target": 0.75, "start": 0.5, "end": 1.5, "frequency": 2, "fallback": "error"}
EQUIVALENT = {  # a tool, and the Campfire settings that are the same pruning
    "torch-ao": {"structure": "block:1x4", "score": "l2"},  # WeightNormSparsifier ranks by L2
    "torch-prune": {"structure": "fine", "scope": "global"},  # one L1 threshold, all layers
}


def write(path, sparsity, **kw):
    path.write_text(yaml.safe_dump(tiny_recipe(sparsity, **kw)))
    return path


def metrics(run):
    """metrics.jsonl of a run, less the epoch times."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def summary(run):
    return json.loads((run / "summary.json").read_text())


@pytest.mark.parametrize("method", list(EQUIVALENT))
def test_each_tool_is_a_campfire_configuration_bit_for_bit(tmp_path, method):
    """torch.ao's WeightNormSparsifier on the GEMM view is Campfire with ``block:1x4, score:
    l2``; torch.nn.utils.prune's global L1 is Campfire with ``fine, scope: global``: the same
    masks, weights and metrics through the same loop."""
    ours = {"method": "campfire", **RAMP, **EQUIVALENT[method]}
    tool = {"method": method, **RAMP, "structure": EQUIVALENT[method]["structure"]}
    for name, sp in (("ours", ours), ("tool", tool)):
        recipe = write(tmp_path / f"{name}.yaml", sp, epochs=2, train_size=256)
        assert train_cli("--recipe", recipe, "--out", tmp_path / name) == 0
    a, b = summary(tmp_path / "ours"), summary(tmp_path / "tool")
    assert a["params_nonzero"] == b["params_nonzero"] and abs(b["sparsity"] - 0.75) < 0.01
    assert_same_files(tmp_path / "ours", tmp_path / "tool")
    assert_same_files(tmp_path / "ours", tmp_path / "tool", "masks.safetensors")
    assert metrics(tmp_path / "ours") == metrics(tmp_path / "tool")
    assert b["method"] == method and b["tool"].startswith(("torch.ao.", "torch.nn.utils.prune."))
    assert b["score"] == EQUIVALENT[method].get("score", "l1") and b["violations"] == {}


@pytest.mark.parametrize(
    "sparsity",
    [{"method": "torch-ao", "structure": "block:1x4"}, {"method": "torch-prune"}],
    ids=["torch-ao", "torch-prune"],
)
def test_a_run_stopped_mid_ramp_resumes_as_if_never_stopped(tmp_path, crash_and_resume, sparsity):
    sp = {**sparsity, "target": 0.5, "start": 0, "end": 1.5, "frequency": 1}
    recipe = write(tmp_path / "recipe.yaml", sp, epochs=3, train_size=256)
    assert train_cli("--recipe", recipe, "--out", tmp_path / "whole") == 0
    crash_and_resume(tmp_path / "cut", "--recipe", recipe, at=1)  # masks half-way up the ramp
    whole, cut = summary(tmp_path / "whole"), summary(tmp_path / "cut")
    assert 0.4 < cut["sparsity"] <= 0.5
    for key in ("top1", "test_loss", "sparsity", "params_nonzero"):
        assert cut[key] == whole[key]
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "whole")
    assert_same_files(tmp_path / "whole", tmp_path / "cut")
    assert_same_files(tmp_path / "whole", tmp_path / "cut", "masks.safetensors")


def nm_convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten())


def zeros_per_block(mask):
    """Zeros in every block of 4 consecutive elements along C*R*S, as a set."""
    return set((~mask).reshape(mask.shape[0], -1, 4).sum(-1).reshape(-1).tolist())


def test_torch_ao_nm_ramps_the_share_of_2_4_blocks_and_ends_2_4():
    cfg = {"method": "torch-ao", "structure": "nm:2:4", "target": 0.5, "start": 0, "end": 1}
    model = nm_convnet()
    sp = sparsegrain.sparsify_(model, {**cfg, "frequency": 1, "exclude": []}, steps_per_epoch=4)
    zeroed = []
    for _ in range(4):
        sp.step()
        masks = sp.masks()
        assert all(zeros_per_block(m) <= {0, 2} for m in masks.values())  # whole 2:4 or dense
        zeroed.append(sum(int((~m).sum()) for m in masks.values()))
    assert zeroed == sorted(zeroed) and 0 < zeroed[1] < zeroed[3]  # a ramp, not one jump
    sp.finalize()
    for name, mask in sp.masks().items():
        assert zeros_per_block(mask) == {2}, name  # every block of 4 has exactly 2 zeros
        assert torch.equal(model.get_submodule(name).weight == 0, ~mask)


def test_the_summary_and_tables_name_the_tool():
    model = nm_convnet()
    cfg = {"method": "torch-ao", "structure": "fine", "target": 0.5, "end": 1, "exclude": []}
    sp = sparsegrain.sparsify_(model, cfg, steps_per_epoch=1)
    extra = sp.method.summary_extra()
    assert extra["tool"] == "torch.ao.pruning.WeightNormSparsifier" and extra["score"] == "l2"
    run = {"method": "torch-ao", "structure": "nm:2:4", "scope": "layer", "score": "l2"}
    assert method_label(run) == "torch.ao WeightNorm 2:4"
    assert method_label({**run, "structure": "block:1x4"}) == "torch.ao WeightNorm block1x4"
    prune = {"method": "torch-prune", "structure": "fine", "scope": "global", "score": "l1"}
    assert method_label(prune) == "torch.nn.utils.prune global L1"


def test_aliases_name_the_tools():
    for alias, name in (("torch.ao", "torch-ao"), ("torch.nn.utils.prune", "torch-prune")):
        cfg = {"method": alias, "target": 0.5, "end": 1, "exclude": []}
        sp = sparsegrain.sparsify_(nm_convnet(), cfg, steps_per_epoch=1)
        assert sp.cfg.method == name


REFUSED = [
    ({"method": "torch-prune", "scope": "layer"}, "sparsity.scope: method 'torch-prune'"),
    ({"method": "torch-ao", "scope": "global"}, "sparsity.scope: method 'torch-ao'"),
    ({"method": "torch-prune", "score": "l2"}, "sparsity.score: method 'torch-prune'"),
    ({"method": "torch-prune", "overrides": {"*": {"score": "l2"}}}, "sparsity.score:"),
    ({"method": "torch-prune", "structure": "block:1x4"}, "sparsity.structure: method"),
    ({"method": "torch-ao", "structure": "kernel"}, "sparsity.structure: method 'torch-ao'"),
    ({"method": "torch-ao", "structure": "nm:2:4", "target": 0.7}, "sparsity.target: method"),
    ({"method": "torch-ao", "structure": "filter", "couple": True}, "sparsity.couple:"),
]


@pytest.mark.parametrize("sparsity, message", REFUSED, ids=[r[1][:22] for r in REFUSED])
def test_what_a_tool_cannot_do_is_refused_in_one_line(tmp_path, capsys, sparsity, message):
    sp = {"target": 0.5, "end": 1, "fallback": "error", **sparsity}
    recipe = write(tmp_path / "recipe.yaml", sp)
    assert train_cli("--recipe", recipe, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()
    with pytest.raises(ConfigError, match=message.split(":")[0]):
        sparsegrain.sparsify_(nm_convnet(), {**sp, "exclude": []}, steps_per_epoch=1)
