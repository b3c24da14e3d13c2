import pytest
import torch
from torch import nn

import sparsegrain
from sparsegrain.core.schedules import cubic_sparsity


def convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.Conv2d(6, 10, 3), nn.Flatten(), nn.Linear(10, 2))


def run_steps(sp, n):
    seen = []
    for _ in range(n):
        sp.step()
        seen.append({k: int((~m).sum()) for k, m in sp.masks().items()})
    return seen


def test_cubic_ramp_every_frequency_steps_then_frozen():
    cfg = {
        "method": "campfire",
        "structure": "fine",
        "target": 0.8,
        "start": 1,
        "end": 3,
        "frequency": 2,
        "exclude": [],
    }
    model = convnet()
    sp = sparsegrain.sparsify_(model, cfg, steps_per_epoch=4)
    seen = run_steps(sp, 16)
    # dense before epoch 1 (steps 1-3)
    assert all(s["1"] == 0 for s in seen[:3])
    # step 4 (epoch 1.0): first update at s_i = 0; step 6 (epoch 1.5): target 0.8 - 0.8 * 0.75^3
    w = model[1].weight
    n = w.numel()  # 540
    expect = cubic_sparsity(1.5, initial=0.0, final=0.8, start=1, end=3)
    assert seen[5]["1"] == round(expect * n)
    assert seen[3]["1"] == seen[4]["1"] == 0  # step 4: update at s_i = 0; step 5: none
    # step 12 (epoch 3): final target, then frozen
    assert seen[11]["1"] == round(0.8 * n)
    assert sp.method.frozen and sp.method.updates == 5  # steps 4, 6, 8, 10, 12
    assert seen[15] == seen[11]


@pytest.mark.parametrize("structure", ["window", "kernel-quota", "combined", "filter", "nm:2:4"])
def test_every_structure_reaches_its_target_and_verifies(structure):
    from sparsegrain.structures import parse_structure, verify

    target = 0.5
    cfg = {
        "method": "campfire",
        "structure": structure,
        "target": target,
        "start": 0,
        "end": 1,
        "frequency": 1,
        "exclude": [],
        "types": ["conv"],
    }
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3))
    sp = sparsegrain.sparsify_(model, cfg, steps_per_epoch=2)
    run_steps(sp, 2)
    st = parse_structure(structure)
    for layer in sp.pruned:
        mask = sp.masks()[layer.name]
        assert verify(mask, st, is_mask=True) == []
        assert abs(float((~mask).float().mean()) - target) <= st.quota_step(tuple(mask.shape))


def test_oneshot_prunes_at_attach_and_keeps_the_mask():
    model = convnet()
    sp = sparsegrain.sparsify_(
        model,
        {"method": "oneshot", "structure": "kernel", "target": 0.5, "exclude": []},
        steps_per_epoch=2,
    )
    before = {k: v.clone() for k, v in sp.masks().items()}
    assert float((~before["1"]).float().mean()) == 0.5  # 60 kernels, 30 pruned
    run_steps(sp, 3)
    assert all(torch.equal(before[k], v) for k, v in sp.masks().items())


def test_user_loop_from_the_readme():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = [(torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))) for _ in range(4)]
    sp = sparsegrain.sparsify_(
        model,
        {
            "method": "campfire",
            "structure": "kernel",
            "target": 0.75,
            "start": 0,
            "end": 2,
            "frequency": 2,
        },
        steps_per_epoch=len(loader),
        optimizer=opt,
    )
    criterion = nn.CrossEntropyLoss()
    for _ in range(3):
        for x, y in loader:
            loss = criterion(model(x), y) + sp.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sp.step()
    plain = sp.finalize()
    w = plain[2].weight.detach()
    kernels_kept = (w.abs().sum(dim=(2, 3)) != 0).sum().item()
    assert kernels_kept == 4  # 16 kernels at 75% -> 4 kept
    rows = {r["name"]: r for r in sp.report()}
    assert rows["2"]["achieved"] == 0.75 and rows["2"]["target"] == 0.75
