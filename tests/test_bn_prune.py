"""BatchNorm channels masked with whole dropped filters (sparsity.prune_bn): pairing by torch.fx,
no regrowth under momentum and weight decay, exact compaction, state round trips, resume, and
the notes and errors a user sees."""

import json

import pytest
import torch
import yaml
from conftest import assert_same_files, first_step, tiny_recipe
from conftest import train_cli as train
from torch import nn
from torch.nn.utils import parametrize

import sparsegrain
from sparsegrain.core.errors import ConfigError
from sparsegrain.core.io import load_tensors, save_tensors
from sparsegrain.core.state import flatten_state, unflatten_state
from sparsegrain.deploy.compact import compact
from sparsegrain.models import create_model
from sparsegrain.recipe.load import load_recipe
from sparsegrain.sparsity.bn import find_norms
from sparsegrain.sparsity.masking import filters_kept

RESNET_PAIRS = {
    "conv1": "bn1",
    "layer1.0.conv1": "layer1.0.bn1",
    "layer1.0.conv2": "layer1.0.bn2",
    "layer2.0.conv1": "layer2.0.bn1",
    "layer2.0.conv2": "layer2.0.bn2",
    "layer2.0.downsample.0": "layer2.0.downsample.1",
    "layer3.0.conv1": "layer3.0.bn1",
    "layer3.0.conv2": "layer3.0.bn2",
    "layer3.0.downsample.0": "layer3.0.downsample.1",
}


def resnet(seed=0):
    torch.manual_seed(seed)
    return create_model("resnet_tiny", num_classes=10, in_channels=3)


def campfire(**kw):
    return first_step(**kw)  # first conv and fc stay dense


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 3, 12, 12, generator=g), torch.randint(0, 10, (8,), generator=g))
        for _ in range(n)
    ]


def x12():
    return torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(7))


def positive_bn_shift(model):
    """BN biases > 0, as after training: without BN masking a dead channel outputs them."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.fill_(0.5)


def trained(steps=6, **cfg):
    """A filter-pruned resnet_tiny trained ``steps`` SGD steps with momentum and weight decay on
    every parameter (BN included)."""
    model = resnet()
    positive_bn_shift(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.01)
    sp = sparsegrain.sparsify_(model, campfire(**cfg), steps_per_epoch=2, optimizer=opt)
    for x, y in batches(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
    return model, sp, opt


def dead(mask):
    return set(int(k) for k in (~filters_kept(mask)).nonzero().flatten())


# -- pairing ---------------------------------------------------------------------------------------


def test_pairs_found_by_fx_on_resnet_tiny():
    model = resnet()
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    found, refused = find_norms(model, names)
    assert found == RESNET_PAIRS and refused == {}  # fc reads no BN: neither paired nor noted
    sp = sparsegrain.sparsify_(model, campfire(), steps_per_epoch=2)
    assert {l.name: l.norm.name for l in sp.pruned} == {
        k: v for k, v in RESNET_PAIRS.items() if k != "conv1"
    }


def test_pairs_found_by_fx_on_vgg_tiny():
    torch.manual_seed(0)
    model = create_model("vgg_tiny", num_classes=10, in_channels=3)
    sp = sparsegrain.sparsify_(model, campfire(exclude=[]), steps_per_epoch=2)
    pairs = {l.name: l.norm.name if l.norm else None for l in sp.pruned}
    assert pairs == {
        "features.0": "features.1",
        "features.4": "features.5",
        "features.7": "features.8",
        "classifier": None,
    }


class Awkward(nn.Module):
    """BNs that must not be paired: after a ReLU, shared by two convs, not affine."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)  # reads relu(a): not a's output directly
        self.b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.c = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.shared = nn.BatchNorm2d(4)  # reads b and c
        self.d = nn.Conv2d(4, 4, 1, bias=False)
        self.plain = nn.BatchNorm2d(4, affine=False)
        self.e = nn.Conv2d(4, 4, 1, bias=False)
        self.bn_e = nn.BatchNorm2d(4)  # the one good pair

    def forward(self, x):
        x = self.bn_a(torch.relu(self.a(x)))
        x = self.shared(self.b(x)) + self.shared(self.c(x))
        return self.bn_e(self.e(self.plain(self.d(x))))


def test_only_direct_single_use_affine_bns_are_paired():
    found, refused = find_norms(Awkward(), ["a", "b", "c", "d", "e"])
    assert found == {"e": "bn_e"}
    assert refused == {
        "b": "BN not masked: BatchNorm 'shared' is called 2 times",
        "c": "BN not masked: BatchNorm 'shared' is called 2 times",
        "d": "BN not masked: BatchNorm 'plain' has no weight and bias (affine=False)",
    }
    sp = sparsegrain.sparsify_(Awkward(), campfire(exclude=[]), steps_per_epoch=2)
    notes = {r["name"]: r["note"] for r in sp.report()}
    assert notes["a"] == "" and notes["d"].endswith("(affine=False)")


def test_untraceable_model_gets_a_note_and_no_pairing():
    torch.manual_seed(0)
    model = create_model("mlp_tiny", num_classes=10, in_channels=1)  # shape check: not traceable
    sp = sparsegrain.sparsify_(model, campfire(exclude=[]), steps_per_epoch=2)
    assert sp.bn_note.startswith("BN not masked: torch.fx cannot trace the model (TraceError")
    assert sp.bn_note.endswith("; pass example_inputs= to trace it from a run")
    assert all(l.norm is None for l in sp.pruned) and sp.bn_masks() == {}
    assert {r["name"]: r["note"] for r in sp.report()} == {"fc1": sp.bn_note, "fc": sp.bn_note}
    sp.step()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert sp.state_dict()["bn_masks"] == {}


# -- the default and the recipe key ------------------------------------------------------------


@pytest.mark.parametrize(
    "structure, prune_bn, masked",
    [
        ("filter", None, True),
        ("filter", False, False),
        ("fine", None, False),
        ("kernel", None, False),
        ("kernel", True, True),
    ],
)
def test_default_is_on_for_filter_only(structure, prune_bn, masked):
    sp = sparsegrain.sparsify_(
        resnet(), campfire(structure=structure, prune_bn=prune_bn), steps_per_epoch=2
    )
    assert all((l.norm is not None) == masked for l in sp.pruned)
    bns = [m for m in sp.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert sum(parametrize.is_parametrized(m, "bias") for m in bns) == (8 if masked else 0)


def test_default_follows_each_layers_structure():
    cfg = campfire(structure="fine", overrides={"layer2.*": {"structure": "filter"}})
    sp = sparsegrain.sparsify_(resnet(), cfg, steps_per_epoch=2)
    assert {l.name for l in sp.pruned if l.norm} == {
        "layer2.0.conv1",
        "layer2.0.conv2",
        "layer2.0.downsample.0",
    }


def test_recipe_key_round_trips_and_is_validated():
    r = load_recipe({"sparsity": campfire(prune_bn=False)})
    assert r.sparsity.prune_bn is False and r.to_dict()["sparsity"]["prune_bn"] is False
    assert load_recipe(yaml.safe_load(r.dump())).to_dict() == r.to_dict()
    assert load_recipe({"sparsity": campfire()}).to_dict()["sparsity"]["prune_bn"] is None
    with pytest.raises(
        ConfigError, match=r"sparsity.prune_bn: expected true/false or null, got 'y"
    ):
        load_recipe({"sparsity": campfire(prune_bn="yes")})
    feather = {"method": "feather", "target": 0.5, "end": 1, "prune_bn": True}
    with pytest.raises(ConfigError, match="sparsity.prune_bn: true is not allowed with method"):
        load_recipe({"sparsity": feather})
    assert load_recipe({"sparsity": {**feather, "prune_bn": False}}).sparsity.prune_bn is False


# -- training: exact zeros, no regrowth ---------------------------------------------------------


def test_bn_weight_and_bias_stay_exactly_zero_under_momentum_and_weight_decay():
    model, sp, opt = trained()
    assert sp.method.frozen
    masks, bn_masks = sp.masks(), sp.bn_masks()
    for layer in sp.pruned:
        keep = bn_masks[layer.norm.name]
        assert torch.equal(keep, filters_kept(masks[layer.name]))
        assert int((~keep).sum()) == keep.numel() // 2  # filter at 0.5: half the filters
        bn = layer.norm.module
        for t in ("weight", "bias"):
            original = getattr(bn.parametrizations, t).original
            assert torch.all(original[~keep] == 0) and torch.all(getattr(bn, t)[~keep] == 0)
            assert torch.all(opt.state[original]["momentum_buffer"][~keep] == 0)
            assert torch.all(original[keep] != 0)  # kept channels train on
    # the dead channels' BN output is exactly 0, in training and in eval
    outputs = {}
    hooks = [
        l.norm.module.register_forward_hook(lambda m, i, o, n=l.norm.name: outputs.update({n: o}))
        for l in sp.pruned
    ]
    for mode in (True, False):
        model.train(mode)
        model(x12())
        for name, keep in bn_masks.items():
            assert torch.all(outputs[name][:, ~keep] == 0), (name, mode)
    for h in hooks:
        h.remove()
    assert sp.verify() == {}
    rows = {r["name"]: r for r in sp.report()}
    assert rows["layer3.0.conv2"]["bn"] == "layer3.0.bn2"
    assert rows["layer3.0.conv2"]["bn_masked"] == 8
    assert rows["layer3.0.conv2"]["note"] == "bn masked: 8 channels"


def resnet_tiny_params(internal, streams, in_ch=3, classes=10):
    """Parameters of resnet_tiny (width 4, one block per stage) with ``internal[i]`` channels
    kept inside block i and ``streams[i]`` on stage i's residual stream."""
    s1, s2, s3 = streams
    n = s1 * in_ch * 9 + 2 * s1  # stem conv1 + bn1
    prev = s1
    for i, s in enumerate(streams):
        c = internal[i]
        n += c * prev * 9 + 2 * c + s * c * 9 + 2 * s  # conv1, bn1, conv2, bn2
        if i > 0:
            n += s * prev + 2 * s  # 1x1 downsample conv + its BN
        prev = s
    return n + classes * s3 + classes  # fc


def test_finalized_model_compacts_exactly():
    model, sp, _ = trained()
    masks = sp.masks()
    sp.finalize()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    model.eval()
    r = compact(model, x12())
    internal = [
        4 - len(dead(masks["layer1.0.conv1"])),
        8 - len(dead(masks["layer2.0.conv1"])),
        16 - len(dead(masks["layer3.0.conv1"])),
    ]
    assert internal == [2, 4, 8]
    # A residual stream channel goes where every writer of it is dead (the stem writes stage 1).
    streams = [4] + [
        w - len(dead(masks[f"layer{i}.0.conv2"]) & dead(masks[f"layer{i}.0.downsample.0"]))
        for i, w in ((2, 8), (3, 16))
    ]
    assert r.params_after == resnet_tiny_params(internal, streams)
    assert r.params_after == sum(p.numel() for p in r.model.parameters())
    assert r.params_before == resnet_tiny_params([4, 8, 16], [4, 8, 16])
    assert r.max_abs_diff < 1e-5
    with torch.no_grad():
        assert float((r.model(x12()) - model(x12())).abs().max()) < 1e-5
    assert r.model.layer3[0].conv1.out_channels == 8 and r.model.layer3[0].bn1.num_features == 8
    assert not any("constant but non-zero" in n for ns in r.notes.values() for n in ns)


def test_prune_bn_false_keeps_the_old_behaviour():
    model, sp, _ = trained(prune_bn=False)
    masks = sp.masks()
    assert sp.bn_masks() == {} and all(l.norm is None for l in sp.pruned)
    bn = model.layer1[0].bn1
    gone = sorted(dead(masks["layer1.0.conv1"]))
    assert torch.all(bn.bias[gone] > 0)  # the dead channels output their BN shift
    sp.finalize()
    r = compact(model.eval(), x12())
    # the shift is a non-zero constant read through conv2's zero padding: no channel goes inside
    # a block, and the model compacts less than with BN masking
    for i in (1, 2, 3):
        assert f"layer{i}.0.conv1" not in r.layers or r.layers[f"layer{i}.0.conv1"].out is None
    assert any("constant but non-zero" in n for n in r.notes["layer1.0.conv1"])
    model_bn, sp_bn, _ = trained()
    sp_bn.finalize()
    assert compact(model_bn.eval(), x12()).params_after < r.params_after
    assert r.max_abs_diff < 1e-5


# -- other paths that set masks -----------------------------------------------------------------


def test_oneshot_at_attach_and_admm_hard_prune_mask_bn():
    for cfg in (
        {"method": "oneshot", "structure": "filter", "target": 0.5},
        {"method": "admm", "structure": "filter", "target": 0.5, "admm_periods": 0},
        {"method": "admm", "structure": "filter", "target": 0.5, "admm_epochs": 1},
    ):
        model = resnet()
        sp = sparsegrain.sparsify_(model, cfg, steps_per_epoch=1, epochs=3)
        for _ in range(2):
            sp.step()
        for layer in sp.pruned:
            keep = sp.bn_masks()[layer.norm.name]
            assert torch.equal(keep, filters_kept(sp.masks()[layer.name])), cfg
            assert int((~keep).sum()) == keep.numel() // 2, cfg
            assert torch.all(layer.norm.module.bias[~keep] == 0)


# -- state ---------------------------------------------------------------------------------------


def round_trip(state):
    tensors, rest = flatten_state(state)
    return unflatten_state({k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(rest)))


def test_state_dict_round_trip_restores_bn_masks():
    model, sp, _ = trained(steps=2)
    state = round_trip(sp.state_dict())
    assert set(state["bn_masks"]) == {l.norm.name for l in sp.pruned}
    other = resnet(seed=5)
    sp2 = sparsegrain.sparsify_(other, campfire(end=2), steps_per_epoch=2)
    assert all(bool(m.all()) for m in sp2.bn_masks().values())  # nothing pruned yet
    other.load_state_dict(model.state_dict())
    sp2.load_state_dict(state)
    for name, keep in sp.bn_masks().items():
        assert torch.equal(sp2.bn_masks()[name], keep)
    model.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(model(x12()), other(x12()))
    # a state from before BN masking: the BN masks follow the restored filter masks
    sp3 = sparsegrain.sparsify_(resnet(), campfire(end=2), steps_per_epoch=2)
    sp3.load_state_dict({k: v for k, v in state.items() if k != "bn_masks"})
    assert all(torch.equal(sp3.bn_masks()[n], k) for n, k in sp.bn_masks().items())
    sp4 = sparsegrain.sparsify_(resnet(), campfire(prune_bn=False), steps_per_epoch=2)
    with pytest.raises(ConfigError, match="this model masks \\[\\] \\(sparsity.prune_bn"):
        sp4.load_state_dict(state)


def test_finalize_bakes_bn_masks_and_keeps_them_readable():
    model, sp, _ = trained(steps=2)
    before = sp.bn_masks()
    sp.finalize()
    assert sp.bn_masks().keys() == before.keys()
    fresh = resnet()
    fresh.load_state_dict(model.state_dict())  # plain keys: the BN parametrizations are gone
    for layer in sp.pruned:
        keep = before[layer.norm.name]
        bn = fresh.get_submodule(layer.norm.name)
        assert torch.all(bn.weight[~keep] == 0) and torch.all(bn.bias[~keep] == 0)
        assert not torch.signbit(bn.bias[~keep]).any()
    assert sp.report()[1]["note"] == "bn masked: 2 channels"


def test_finalize_without_handle_bakes_bn_masks():
    model, sp, _ = trained(steps=2)
    bn_masks = sp.bn_masks()
    sparsegrain.finalize_(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert torch.all(model.layer2[0].bn2.bias[~bn_masks["layer2.0.bn2"]] == 0)


# -- the trainer: resume ------------------------------------------------------------------------

RECIPE = tiny_recipe(
    {
        "method": "campfire",
        "structure": "filter",
        "target": 0.5,
        "start": 0.25,
        "end": 1.5,
        "frequency": 2,
    },
    epochs=2,
    seed=3,
    train_size=256,
    test_size=128,
    test_batch=128,
)


def recipe_file(path, **sparsity):
    recipe = {**RECIPE, "sparsity": {**RECIPE["sparsity"], **sparsity}}
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_resume_restores_bn_masks_exactly(tmp_path, crash_and_resume):
    recipe = recipe_file(tmp_path / "r.yaml")
    assert train("--recipe", recipe, "--out", tmp_path / "ref") == 0
    crash_and_resume(tmp_path / "crashed", "--recipe", recipe)
    assert_same_files(tmp_path / "ref", tmp_path / "crashed")
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    rows = [r for r in summary["layers"] if r["structure"] == "filter"]
    assert rows and all(r["bn_masked"] == r["shape"][0] // 2 for r in rows)
    weights, _ = load_tensors(tmp_path / "ref" / "model.safetensors")
    masks, _ = load_tensors(tmp_path / "ref" / "masks.safetensors")
    for r in rows:
        gone = ~filters_kept(masks[r["name"]])
        assert torch.all(weights[f"{r['bn']}.weight"][gone] == 0)
        assert torch.all(weights[f"{r['bn']}.bias"][gone] == 0)


def test_resume_of_a_checkpoint_from_before_bn_masking(tmp_path, crash_and_resume, monkeypatch):
    """A run started without BN masking (its checkpoint has no BN masks and unmasked BN weights,
    its recipe.yaml no prune_bn key) resumes as it started."""
    old = recipe_file(tmp_path / "old.yaml", prune_bn=False)
    assert train("--recipe", old, "--out", tmp_path / "ref") == 0

    from sparsegrain.runs import files as runfiles

    real_save = runfiles.save_checkpoint

    def save_as_before(out, model, opt, sp, *rest):
        real_save(out, model, opt, sp, *rest)
        tensors, meta = load_tensors(out / runfiles.CHECKPOINT)
        assert meta["sparsity"].pop("bn_masks") == {}
        save_tensors(out / runfiles.CHECKPOINT, tensors, meta)
        recipe = yaml.safe_load((out / "recipe.yaml").read_text())
        recipe["sparsity"].pop("prune_bn", None)  # unset: on for filter
        (out / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    monkeypatch.setattr(runfiles, "save_checkpoint", save_as_before)
    crash_and_resume(tmp_path / "crashed", "--recipe", old)
    assert_same_files(tmp_path / "ref", tmp_path / "crashed")
    summary = json.loads((tmp_path / "crashed" / "summary.json").read_text())
    notes = [r["note"] for r in summary["layers"] if r["structure"] == "filter"]
    assert notes and all("resumed from a checkpoint that did not mask" in n for n in notes)
