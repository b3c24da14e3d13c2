"""Layer sensitivity (one layer pruned at a time, weights restored exactly), budget suggestion."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsegrain.analysis.accuracy import evaluate
from sparsegrain.analysis.sensitivity import Sensitivity, layer_sensitivity, suggest_budgets
from sparsegrain.recipe.config import SparsityConfig
from sparsegrain.sparsity.masking import select_layers


class Net(nn.Module):
    """conv1 (4,1,3,3)  conv2 (4,4,3,3)  conv3 (4,4,1,1)  fc (2,256)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.relu(self.conv3(x)).flatten(1))


def data(n: int, seed: int):
    """Two Gaussian blobs as 1x8x8 images (normalized), labels 0/1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = (2.0 * y - 1).view(n, 1, 1, 1) * 0.6 + torch.randn(n, 1, 8, 8, generator=g)
    return x, y


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = Net()
    x, y = data(256, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture
def model(trained):
    m = Net()
    m.load_state_dict(trained.state_dict())
    return m.eval()


@pytest.fixture(scope="module")
def loader():
    x, y = data(128, seed=2)
    return [(x[:64], y[:64]), (x[64:], y[64:])]


def state_bytes(model):
    return {
        k: v.detach().clone().flatten().view(torch.uint8) for k, v in model.state_dict().items()
    }


def test_weights_restored_bit_for_bit(model, loader):
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = -0.0  # the sign of a zero must survive too
    before = state_bytes(model)
    sens = layer_sensitivity(model, loader, ["*"], "kernel", [0.0, 0.5, 0.9])
    after = state_bytes(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert list(sens) == ["conv1", "conv2", "conv3", "fc"]


def test_weights_restored_when_evaluation_fails(model):
    before = state_bytes(model)

    def bad_loader():
        yield data(8, seed=3)
        raise RuntimeError("disk gone")

    class Once:
        calls = 0

        def __iter__(self):
            Once.calls += 1
            return iter([data(8, seed=3)]) if Once.calls == 1 else bad_loader()

    with pytest.raises(RuntimeError, match="disk gone"):
        layer_sensitivity(model, Once(), ["conv2"], "fine", [0.5])
    after = state_bytes(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_zero_sparsity_gives_the_baseline(model, loader):
    sens = layer_sensitivity(model, loader, ["*"], "fine", [0.0, 0.9])
    clean = evaluate(model, loader)["top1"]
    assert sens.baseline == clean
    assert all(curve[0.0] == clean for curve in sens.values())


def test_one_layer_pruned_at_a_time(model, loader):
    """Every forward pass sees exactly one layer with its pruned zero count, the others intact."""
    names = ["conv1", "conv2", "conv3", "fc"]
    seen = []
    hooks = [
        getattr(model, n).register_forward_pre_hook(
            lambda m, _, n=n: seen.append((n, int((m.weight == 0).sum())))
        )
        for n in names
    ]
    sens = layer_sensitivity(model, loader, names, "fine", [0.0, 0.5, 0.75], max_batches=1)
    for h in hooks:
        h.remove()
    passes = [dict(seen[i : i + 4]) for i in range(0, len(seen), 4)]
    sizes = {"conv1": 36, "conv2": 144, "conv3": 16, "fc": 512}
    expected = [dict.fromkeys(names, 0)]  # the baseline; s = 0 reuses it, no pass
    for n in names:
        for s in (0.5, 0.75):
            expected.append({**dict.fromkeys(names, 0), n: round(s * sizes[n])})
    assert passes == expected
    assert sens.params == sizes
    assert sens.achieved["conv2"] == {0.0: 0.0, 0.5: 0.5, 0.75: 0.75}


def test_achieved_sparsity_is_exact_and_monotone(model, loader):
    sens = layer_sensitivity(model, loader, ["conv2"], "kernel", [0.9, 0.1, 0.5, 0.5])
    # 16 kernels: keep 16 - round(16 s); sparsities are sorted and deduplicated
    assert sens.achieved["conv2"] == {0.1: 2 / 16, 0.5: 8 / 16, 0.9: 14 / 16}
    assert list(sens["conv2"]) == [0.1, 0.5, 0.9]
    assert sens.structure == "kernel"


def test_default_layers_skip_first_conv_and_classifier(model, loader):
    sens = layer_sensitivity(model, loader, sparsities=[0.5])
    assert list(sens) == ["conv2", "conv3"]


def test_structure_that_does_not_fit_is_skipped_with_a_note(model, loader):
    with pytest.warns(UserWarning) as caught:
        sens = layer_sensitivity(model, loader, ["conv*", "fc"], "window", [0.5])
    assert [str(w.message).split(":")[1] for w in caught] == [" skipped 'conv3'", " skipped 'fc'"]
    assert list(sens) == ["conv1", "conv2"]
    assert set(sens.skipped) == {"conv3", "fc"}
    assert "larger than 1x1" in sens.skipped["conv3"]


def test_parametrized_weight_is_pruned_on_top_of_its_mask(model, loader):
    class Mask(nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, w):
            return w * self.mask

    keep = torch.zeros_like(model.conv2.weight, dtype=torch.bool)
    keep[:2] = True  # half of the filters masked out by the parametrization
    parametrize.register_parametrization(model.conv2, "weight", Mask(keep))
    original = model.conv2.parametrizations.weight.original.detach().clone()
    seen = []
    model.conv2.register_forward_pre_hook(lambda m, _: seen.append(int((m.weight != 0).sum())))
    layer_sensitivity(model, loader, ["conv2"], "fine", [0.75], max_batches=1)
    assert seen == [72, 36]  # 72 live weights, then 144 - round(0.75 * 144) = 36
    assert torch.equal(model.conv2.parametrizations.weight.original, original)


def test_progress_bar_gives_the_same_numbers(model, loader):
    plain = layer_sensitivity(model, loader, ["conv2"], "fine", [0.5])
    assert layer_sensitivity(model, loader, ["conv2"], "fine", [0.5], progress=True) == plain


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(layers=["conv9"]), "unknown layer 'conv9'.*did you mean 'conv3'"),
        (dict(layers="conv2"), "list of layer names"),
        (dict(sparsities=[1.0]), r"\[0, 1\)"),
        (dict(sparsities=[]), "non-empty"),
        (dict(structure="kernal"), "did you mean 'kernel'"),
    ],
)
def test_bad_arguments_raise_value_error(model, loader, kwargs, message):
    with pytest.raises(ValueError, match=message):
        layer_sensitivity(model, loader, **kwargs)


# -- suggest_budgets ------------------------------------------------------------------------------

SENS = {
    "a": {0.5: 90.0, 0.7: 89.5, 0.9: 80.0},  # tolerates 0.7
    "b": {0.5: 89.0, 0.7: 85.0, 0.9: 84.0},  # tolerates 0.5
    "c": {0.5: 85.0, 0.7: 90.0},  # fails at 0.5: the good point past it is not trusted -> 0
}
PARAMS = {"a": 300, "b": 100, "c": 100}


def test_budgets_scaled_down_to_the_target():
    # tolerated 0.7, 0.5, 0: weighted mean (210 + 50 + 0) / 500 = 0.52; target 0.26 halves them
    out = suggest_budgets(SENS, 90.0, target=0.26, tolerance=1.0, params=PARAMS)
    assert out == {"a": {"target": 0.35}, "b": {"target": 0.25}, "c": {"target": 0.0}}


def test_budgets_unscaled_with_a_warning_when_the_target_is_out_of_reach():
    with pytest.warns(UserWarning, match="0.5200, below the target 0.8"):
        out = suggest_budgets(SENS, 90.0, target=0.8, tolerance=1.0, params=PARAMS)
    assert out == {"a": {"target": 0.7}, "b": {"target": 0.5}, "c": {"target": 0.0}}


def test_budgets_at_exactly_the_reachable_mean_and_tolerance_boundary():
    sens = {"a": {0.5: 89.0, 0.8: 88.9}, "b": {0.5: 90.0}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = suggest_budgets(sens, 90.0, target=0.5, tolerance=1.0, params={"a": 1, "b": 1})
    assert out == {"a": {"target": 0.5}, "b": {"target": 0.5}}  # a drops 1.0 at 0.5: allowed


def test_budgets_escape_glob_characters_and_need_parameter_counts():
    out = suggest_budgets(
        {"blocks[0].conv": {0.5: 90.0}}, 90.0, 0.25, 1.0, params={"blocks[0].conv": 4}
    )
    assert out == {"blocks[[]0].conv": {"target": 0.25}}
    with pytest.raises(ValueError, match="no parameter count for layer.*b"):
        suggest_budgets(SENS, 90.0, 0.2, 1.0, params={"a": 1})


def test_budgets_from_a_scan_paste_into_a_recipe(model, loader):
    sens = layer_sensitivity(model, loader, ["conv2", "conv3"], "fine", [0.25, 0.5, 0.75])
    assert isinstance(sens, Sensitivity)
    overrides = suggest_budgets(sens, sens.baseline, target=0.3, tolerance=100.0)
    # tolerance 100 accepts everything: 0.75 for both, scaled by 0.3 / 0.75
    assert overrides == {"conv2": {"target": 0.3}, "conv3": {"target": 0.3}}
    cfg = SparsityConfig.parse(  # validates the overrides
        {"method": "oneshot", "structure": "fine", "target": 0.9, "overrides": overrides}
    )
    targets = {layer.name: layer.target for layer in select_layers(model, cfg)}
    assert targets == {"conv1": 0.0, "conv2": 0.3, "conv3": 0.3, "fc": 0.0}
