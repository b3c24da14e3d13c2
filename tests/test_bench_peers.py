"""The bar of the quality benchmark: bench/peers.py's verdict per structure and target."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import peers  # noqa: E402

AO = peers.PEERS["ao-block1x4"].method
PRUNE = peers.PEERS["prune-global"].method


def run(method, structure, target, top1):
    return {"method": method, "structure": structure, "target": target, "top1": top1}


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
         "sparsegrain ahead"],
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
