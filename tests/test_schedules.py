import math

import pytest

from sparsegrain.core.schedules import cubic_sparsity, lr_at


def test_cubic_sparsity_values():
    kw = dict(initial=0.0, final=0.8, start=1.0, end=3.0)
    assert cubic_sparsity(0.5, **kw) == 0.0
    assert cubic_sparsity(1.0, **kw) == 0.0
    # halfway: s_f + (s_i - s_f) (1 - 1/2)^3 = 0.8 - 0.8/8 = 0.7
    assert cubic_sparsity(2.0, **kw) == pytest.approx(0.7)
    assert cubic_sparsity(3.0, **kw) == 0.8
    assert cubic_sparsity(9.0, **kw) == 0.8
    assert cubic_sparsity(1.0, initial=0.2, final=0.8, start=1.0, end=3.0) == pytest.approx(0.2)


def test_cubic_sparsity_monotone():
    vals = [cubic_sparsity(t / 100, initial=0.1, final=0.9, start=0.5, end=2.5) for t in range(300)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))


def test_cubic_one_shot_jump():
    assert cubic_sparsity(0.99, initial=0.0, final=0.5, start=1.0, end=1.0) == 0.0
    assert cubic_sparsity(1.0, initial=0.0, final=0.5, start=1.0, end=1.0) == 0.5


def test_lr_schedules():
    assert lr_at(3.0, base_lr=0.1, epochs=10, schedule="constant") == 0.1
    assert lr_at(0.0, base_lr=0.1, epochs=10, schedule="cosine") == pytest.approx(0.1)
    assert lr_at(5.0, base_lr=0.1, epochs=10, schedule="cosine") == pytest.approx(0.05)
    assert lr_at(10.0, base_lr=0.1, epochs=10, schedule="cosine") == pytest.approx(0.0)
    assert lr_at(5.0, base_lr=0.1, epochs=10, schedule="cosine", min_lr=0.01) == pytest.approx(
        0.01 + 0.5 * 0.09
    )
    assert lr_at(2.9, base_lr=0.1, epochs=10, schedule="step", step_size=3) == pytest.approx(0.1)
    assert lr_at(3.0, base_lr=0.1, epochs=10, schedule="step", step_size=3) == pytest.approx(0.01)
    ms = dict(base_lr=1.0, epochs=10, schedule="multistep", milestones=[2, 5], gamma=0.5)
    assert [lr_at(t, **ms) for t in (1.9, 2.0, 4.9, 5.0)] == [1.0, 0.5, 0.5, 0.25]


def test_warmup_linear():
    kw = dict(base_lr=0.1, epochs=10, schedule="constant", warmup_epochs=2)
    assert lr_at(0.0, **kw) == 0.0
    assert lr_at(1.0, **kw) == pytest.approx(0.05)
    assert lr_at(2.0, **kw) == pytest.approx(0.1)


def test_restart_at_freeze():
    kw = dict(base_lr=0.1, epochs=10, schedule="cosine", restart_at=4.0)
    assert lr_at(3.99, **kw) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.399)))
    assert lr_at(4.0, **kw) == pytest.approx(0.1)  # restarted from base_lr
    assert lr_at(7.0, **kw) == pytest.approx(0.05)  # half of the remaining 6 epochs
    assert lr_at(4.0, **kw, restart_lr=0.03) == pytest.approx(0.03)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="choose from"):
        lr_at(0.0, base_lr=0.1, epochs=1, schedule="cosin")


def test_trainer_restarts_the_lr_at_freeze_only_for_freezing_methods():
    from sparsegrain.recipe.load import load_recipe
    from sparsegrain.train.loop import lr_for

    sets = [
        "train.epochs=10",
        "train.lr_at_freeze=restart",
        "sparsity.target=0.5",
        "sparsity.start=1",
        "sparsity.end=4",
    ]
    camp = load_recipe({}, sets + ["sparsity.method=campfire"])
    assert lr_for(camp, 3.99) == pytest.approx(lr_at(3.99, base_lr=0.1, epochs=10))
    assert lr_for(camp, 4.0) == pytest.approx(0.1)
    assert lr_for(camp, 7.0) == pytest.approx(0.05)
    boost = load_recipe(
        {}, sets + ["sparsity.method=campfire", "train.lr_at_freeze=boost", "train.freeze_lr=0.03"]
    )
    assert lr_for(boost, 4.0) == pytest.approx(0.03)
    feather = load_recipe({}, sets + ["sparsity.method=feather"])
    assert lr_for(feather, 4.0) == pytest.approx(lr_at(4.0, base_lr=0.1, epochs=10))
