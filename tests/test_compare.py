"""The comparison tables of run summaries: the verdict of PyTorch's tools against sparsegrain's
best per structure and target, and the side-by-side table."""

from sparsegrain.analysis.compare import table, verdict

AO = "torch.ao WeightNorm block1x4"  # the label of a torch-ao run on block:1x4
PRUNE = "torch.nn.utils.prune global L1"
TOOL = {  # what a torch-ao / torch-prune run's summary.json says
    "torch-ao": {"method": "torch-ao", "scope": "layer", "score": "l2"},
    "torch-prune": {"method": "torch-prune", "scope": "global", "score": "l1"},
}


def run(method, structure, target, top1, **kw):
    base = TOOL.get(method, {"method": method})
    return {**base, "structure": structure, "target": target, "top1": top1, **kw}


def rows(results):
    lines = verdict(dict(enumerate(results))).splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_peer_against_best_sparsegrain_method_of_same_structure_and_target():
    got = rows(
        [
            run("dense", "dense", 0.0, 93.4),
            run("campfire", "fine", 0.9, 92.7),
            run("feather", "fine", 0.9, 93.1),
            run("torch-prune", "fine", 0.9, 92.9),
            run("campfire", "fine", 0.7, 93.0),  # no peer at 0.7: no row
            run("torch-ao", "block:1x4", 0.5, 93.0),  # no sparsegrain run: no row
        ]
    )
    assert got == [
        ["fine", "0.90", "feather 93.10 (n=1)", f"{PRUNE} 92.90 (n=1)", "-0.20", "-",
         "sparsegrain ahead, one seed: spread unknown"],
    ]  # fmt: skip


def test_a_non_default_score_is_its_own_configuration_and_can_be_level():
    l2 = [run("campfire", "block:1x4", 0.9, t, score="l2") for t in (92.7, 92.42)]
    l1 = [run("campfire", "block:1x4", 0.9, t, score="l1") for t in (92.55, 92.17)]
    peer = [run("torch-ao", "block:1x4", 0.9, t) for t in (92.7, 92.42)]
    got = rows(l1 + l2 + peer)
    assert got == [
        ["block:1x4", "0.90", "campfire (l2) 92.56 (n=2)", f"{AO} 92.56 (n=2)", "+0.00", "0.28",
         "level"],
    ]  # fmt: skip


def test_one_seed_ahead_is_not_judged():
    got = rows([run("campfire", "block:1x4", 0.9, 92.55), run("torch-ao", "block:1x4", 0.9, 92.70)])
    assert got[0][4:] == ["+0.15", "-", "peer ahead, one seed: spread unknown"]


def test_seed_spread_is_the_wider_min_max_range_of_the_two():
    ours = [run("campfire", "block:1x4", 0.9, t) for t in (92.5, 92.7)]  # mean 92.6, range 0.2

    def peer(*top1):
        return [run("torch-ao", "block:1x4", 0.9, t) for t in top1]

    within = rows(ours + peer(92.7, 92.8))  # mean 92.75
    assert within[0][2:] == ["campfire 92.60 (n=2)", f"{AO} 92.75 (n=2)", "+0.15", "0.20",
                             "peer ahead within the seed spread"]  # fmt: skip
    beyond = rows(ours + peer(92.9, 93.0))  # mean 92.95
    assert beyond[0][4:] == ["+0.35", "0.20", "**peer ahead beyond the seed spread**"]
    behind = rows(ours + peer(92.4, 92.5))  # mean 92.45
    assert behind[0][4:] == ["-0.15", "0.20", "sparsegrain ahead within the seed spread"]
    far = rows(ours + peer(92.1, 92.2))  # mean 92.15
    assert far[0][4:] == ["-0.45", "0.20", "sparsegrain ahead beyond the seed spread"]


def test_summaries_named_after_the_tool_are_the_same_configuration():
    """Runs recorded with method ``torch.ao WeightNorm 2:4`` (and the like, as in
    bench/results/peers.json) count with the torch-ao / torch-prune runs of that structure."""
    old = [
        {"method": "torch.ao WeightNorm 2:4", "structure": "nm:2:4", "target": 0.5, "top1": 92.9},
        {"method": PRUNE, "structure": "fine", "target": 0.5, "top1": 93.2},
    ]
    new = [run("torch-ao", "nm:2:4", 0.5, 93.1), run("torch-prune", "fine", 0.5, 93.0)]
    ours = [run("campfire", "nm:2:4", 0.5, 93.0), run("campfire", "fine", 0.5, 93.0)]
    got = rows(old + new + ours)
    assert [r[2:5] for r in got] == [
        ["campfire 93.00 (n=1)", f"{PRUNE} 93.10 (n=2)", "+0.10"],
        ["campfire 93.00 (n=1)", "torch.ao WeightNorm 2:4 93.00 (n=2)", "+0.00"],
    ]


def test_table_averages_seeds_sorted_by_target_then_top1():
    common = {"sparsity": 0.5, "top5": 99.9, "wall_time": 10.0}
    results = [
        run("dense", "dense", 0.0, 93.0, **common),
        run("campfire", "fine", 0.5, 92.0, **common),
        run("torch-prune", "fine", 0.5, 92.5, **common),
        run("torch-prune", "fine", 0.5, 92.7, **common),
    ]
    lines = table(dict(enumerate(results))).splitlines()[2:]
    assert lines == [
        "| dense | dense | 0.00 | 0.5000 | 93.00 | +0.00 | 1 | 99.90 | 10 |",
        f"| {PRUNE} | fine | 0.50 | 0.5000 | 92.60 (92.50-92.70) | -0.40 | 2 | 99.90 | 10 |",
        "| campfire | fine | 0.50 | 0.5000 | 92.00 | -1.00 | 1 | 99.90 | 10 |",
    ]
