"""The bar of the quality benchmark: bench/peers.py's verdict per structure and target."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe, train_cli

from sparsegrain.core.io import load_tensors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import peers  # noqa: E402

AO = peers.PEERS["ao-block1x4"].method
PRUNE = peers.PEERS["prune-global"].method


def run(method, structure, target, top1):
    return {"method": method, "structure": structure, "target": target, "top1": top1}


def metrics(run):
    """metrics.jsonl of a run, less the epoch times."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def rows(results):
    lines = peers.verdict(dict(enumerate(results))).splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_peer_against_best_sparsegrain_method_of_same_structure_and_target():
    got = rows(
        [
            run("dense", "dense", 0.0, 93.4),
            run("campfire", "fine", 0.9, 92.7),
            run("feather", "fine", 0.9, 93.1),
            run(PRUNE, "fine", 0.9, 92.9),
            run("campfire", "fine", 0.7, 93.0),  # no peer at 0.7: no row
            run(AO, "block:1x4", 0.5, 93.0),  # no sparsegrain run: no row
        ]
    )
    assert got == [
        ["fine", "0.90", "feather 93.10 (n=1)", f"{PRUNE} 92.90 (n=1)", "-0.20", "-",
         "sparsegrain ahead, one seed: spread unknown"],
    ]  # fmt: skip


def test_a_non_default_score_is_its_own_configuration_and_can_be_level():
    l2 = [run("campfire", "block:1x4", 0.9, t) | {"score": "l2"} for t in (92.7, 92.42)]
    l1 = [run("campfire", "block:1x4", 0.9, t) | {"score": "l1"} for t in (92.55, 92.17)]
    peer = [run(AO, "block:1x4", 0.9, t) for t in (92.7, 92.42)]
    got = rows(l1 + l2 + peer)
    assert got == [
        ["block:1x4", "0.90", "campfire (l2) 92.56 (n=2)", f"{AO} 92.56 (n=2)", "+0.00", "0.28",
         "level"],
    ]  # fmt: skip


def test_one_seed_ahead_is_not_judged():
    got = rows([run("campfire", "block:1x4", 0.9, 92.55), run(AO, "block:1x4", 0.9, 92.70)])
    assert got[0][4:] == ["+0.15", "-", "peer ahead, one seed: spread unknown"]


def test_seed_spread_is_the_wider_min_max_range_of_the_two():
    ours = [run("campfire", "block:1x4", 0.9, t) for t in (92.5, 92.7)]  # mean 92.6, range 0.2
    within = rows(ours + [run(AO, "block:1x4", 0.9, t) for t in (92.7, 92.8)])  # mean 92.75
    assert within[0][2:] == ["campfire 92.60 (n=2)", f"{AO} 92.75 (n=2)", "+0.15", "0.20",
                             "peer ahead within the seed spread"]  # fmt: skip
    beyond = rows(ours + [run(AO, "block:1x4", 0.9, t) for t in (92.9, 93.0)])  # mean 92.95
    assert beyond[0][4:] == ["+0.35", "0.20", "**peer ahead beyond the seed spread**"]
    behind = rows(ours + [run(AO, "block:1x4", 0.9, t) for t in (92.4, 92.5)])  # mean 92.45
    assert behind[0][4:] == ["-0.15", "0.20", "sparsegrain ahead within the seed spread"]
    far = rows(ours + [run(AO, "block:1x4", 0.9, t) for t in (92.1, 92.2)])  # mean 92.15
    assert far[0][4:] == ["-0.45", "0.20", "sparsegrain ahead beyond the seed spread"]


@pytest.mark.parametrize("key", ["prune-global", "ao-block1x4"])
def test_interrupted_peer_run_goes_on_as_if_never_stopped(tmp_path, monkeypatch, key):
    sparsity = {"method": "campfire", "structure": "fine", "start": 0, "end": 1.5, "frequency": 1}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(sparsity, epochs=3, train_size=256)))
    peer = peers.PEERS[key]
    recipe = peers.build_recipe(path, peer, 0.5, 0, False, [])
    whole = peers.train_peer("whole", peer, recipe, tmp_path / "whole", 1)

    real_save = peers.save_checkpoint

    def save_then_die(out, model, optimizer, ramp, epoch, *rest):
        real_save(out, model, optimizer, ramp, epoch, *rest)
        if epoch == 1:  # mid-ramp: the masks are partly pruned, the next updates still to come
            raise KeyboardInterrupt

    monkeypatch.setattr(peers, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        peers.train_peer("cut", peer, recipe, tmp_path / "cut", 1)
    monkeypatch.setattr(peers, "save_checkpoint", real_save)
    assert not (tmp_path / "cut" / "summary.json").exists()
    cut = peers.train_peer("cut", peer, recipe, tmp_path / "cut", 1)

    assert 0.4 < cut["sparsity"] <= 0.5
    for key_ in ("top1", "test_loss", "sparsity", "params_nonzero"):
        assert cut[key_] == whole[key_]
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "whole")
    a, _ = load_tensors(tmp_path / "whole" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_changed_recipe_starts_again(tmp_path, capsys):
    sparsity = {"method": "campfire", "structure": "fine", "start": 0, "end": 0.5, "frequency": 1}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(sparsity, epochs=1)))
    peer = peers.PEERS["prune-global"]
    peers.train_peer("a", peer, peers.build_recipe(path, peer, 0.5, 0, False, []), tmp_path, 1)
    again = peers.build_recipe(path, peer, 0.7, 0, False, [])
    summary = peers.train_peer("a", peer, again, tmp_path, 1)
    assert "recipe changed" in capsys.readouterr().out
    assert summary["target"] == 0.7 and len(metrics(tmp_path)) == 1


EQUIVALENT = {  # a peer, and the sparsegrain settings that are the same pruning
    "ao-block1x4": {"structure": "block:1x4", "score": "l2"},  # torch.ao ranks blocks by L2
    "prune-global": {"structure": "fine", "scope": "global"},  # one L1 threshold, all layers
}


@pytest.mark.parametrize("key", list(EQUIVALENT))
def test_each_peer_is_a_sparsegrain_configuration_bit_for_bit(tmp_path, key):
    """Gradual pruning on the same loop: torch.ao's WeightNormSparsifier + CubicSL is Campfire
    with ``block:1x4, score: l2``; torch.nn.utils.prune's global_unstructured (L1) applied at
    every mask update is Campfire with ``fine, scope: global``. Same masks, weights, metrics."""
    sparsity = {"method": "campfire", "target": 0.75, "start": 0.5, "end": 1.5, "frequency": 2}
    sparsity |= {"fallback": "error", **EQUIVALENT[key]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(sparsity, epochs=2, train_size=256)))
    assert train_cli("--recipe", path, "--out", tmp_path / "ours") == 0
    peer = peers.PEERS[key]
    theirs = peers.train_peer(key, peer, peers.build_recipe(path, peer, 0.75, 0, False, []),
                              tmp_path / "peer", 1)  # fmt: skip
    ours = json.loads((tmp_path / "ours" / "summary.json").read_text())
    assert ours["params_nonzero"] == theirs["params_nonzero"]
    assert abs(ours["sparsity"] - 0.75) < 0.01
    for name in ("masks.safetensors", "model.safetensors"):
        a, _ = load_tensors(tmp_path / "ours" / name)
        b, _ = load_tensors(tmp_path / "peer" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert metrics(tmp_path / "ours") == metrics(tmp_path / "peer")
