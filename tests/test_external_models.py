"""Models users bring (torchvision:, timm:, hf:) through recipes and the CLI, and the synthetic
token dataset that text models train on."""

import gzip
import importlib.util
import json
import struct

import numpy as np
import pytest
import torch
import yaml
from conftest import train_cli

from sparsegrain import cli
from sparsegrain.analysis.accuracy import evaluate
from sparsegrain.analysis.robustness import attack_accuracy
from sparsegrain.analysis.sensitivity import layer_sensitivity
from sparsegrain.core.errors import ConfigError
from sparsegrain.core.io import load_tensors
from sparsegrain.data.catalog import DataConfig, build_data, dataset_inputs
from sparsegrain.data.tokens import make_tokens
from sparsegrain.models import create_model
from sparsegrain.models.external import (
    external_source,
    import_timm,
    import_torchvision,
    import_transformers,
)
from sparsegrain.recipe import load_recipe
from sparsegrain.recipe.build import build_model


def _needs(package):
    return pytest.mark.skipif(
        importlib.util.find_spec(package) is None, reason=f"{package} is not installed"
    )


needs_torchvision = _needs("torchvision")
needs_timm = _needs("timm")
needs_transformers = _needs("transformers")

# A 2-layer BERT of width 32 (4 heads) over 64 token ids: 21,476 parameters with 4 labels.
BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "vocab_size": 64,
    "max_position_embeddings": 32,
}
VIT = {
    "model_type": "vit",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "image_size": 16,
    "patch_size": 4,
}
ATTO = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}  # a timm ConvNeXt of 62k parameters
CONVNEXT_ATTO_PARAMS = 62_059  # with ATTO, 2 input channels and 3 classes
TOKENS = {
    "name": "synthetic-tokens",
    "vocab_size": 64,
    "seq_len": 16,
    "synthetic_train": 64,
    "synthetic_test": 32,
    "batch_size": 16,
    "test_batch_size": 32,
}


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def bert_json(tmp_path):
    return write_json(tmp_path / "bert.json", BERT)


def recipe_for(model, data=None):
    return load_recipe({"model": model, "data": data or {"name": "synthetic", "image_size": 16}})


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ---- names ---------------------------------------------------------------------------------


def test_prefixed_names_split_and_zoo_names_do_not():
    assert external_source("torchvision:resnet18") == ("torchvision", "resnet18")
    assert external_source(" TIMM:convnext_nano ") == ("timm", "convnext_nano")
    assert external_source("hf:configs/a:b.json") == ("hf", "configs/a:b.json")
    assert external_source("resnet20") is None


# ---- building through the recipe path ------------------------------------------------------


@needs_torchvision
@pytest.mark.slow
def test_torchvision_model_gets_the_data_channels_and_options():
    tv = import_torchvision()
    model = build_model(
        recipe_for({"name": "torchvision:resnet18", "zero_init_residual": True}), 7, 1
    )
    assert type(model) is tv.models.ResNet
    assert model.conv1.weight.shape == (64, 1, 7, 7)  # rebuilt for one channel
    assert model.fc.out_features == 7
    reference = tv.models.resnet18(num_classes=7)
    assert n_params(model) == n_params(reference) - 64 * 2 * 7 * 7
    blocks = [m for m in model.modules() if isinstance(m, tv.models.resnet.BasicBlock)]
    assert len(blocks) == 8 and all(torch.all(b.bn2.weight == 0) for b in blocks)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


@needs_torchvision
def test_torchvision_first_conv_inside_a_sequential_is_rebuilt():
    model = create_model(
        "torchvision:mobilenet_v3_small", num_classes=10, in_channels=1, width_mult=0.25
    )
    assert model.features[0][0].weight.shape == (8, 1, 3, 3)
    assert n_params(model) == 119_842 - 8 * 2 * 3 * 3
    kept = create_model("torchvision:mobilenet_v3_small", num_classes=10, in_channels=3)
    assert kept.features[0][0].weight.shape == (16, 3, 3, 3)  # 3 channels: left as built


@needs_timm
def test_timm_model_takes_in_chans_num_classes_and_options():
    timm = import_timm()
    options = {**ATTO, "drop_path_rate": 0.3}
    model = build_model(recipe_for({"name": "timm:convnext_atto", **options}), 3, 2)
    assert type(model).__name__ == "ConvNeXt"
    assert model.stem[0].weight.shape == (8, 2, 4, 4)
    assert model.head.fc.weight.shape == (3, 64)
    probs = [float(getattr(b.drop_path, "drop_prob", 0.0)) for s in model.stages for b in s.blocks]
    assert probs == pytest.approx([0.0, 0.1, 0.2, 0.3])
    same = timm.create_model("convnext_atto", num_classes=3, in_chans=2, **ATTO)
    assert n_params(model) == n_params(same) == CONVNEXT_ATTO_PARAMS
    assert model(torch.randn(2, 2, 32, 32)).shape == (2, 3)


@needs_transformers
def test_hf_text_config_builds_a_sequence_classifier(bert_json):
    tr = import_transformers()
    rec = recipe_for({"name": f"hf:{bert_json}", "hidden_dropout_prob": 0.0}, TOKENS)
    model = build_model(rec, 4, None)
    assert type(model) is tr.BertForSequenceClassification
    assert model.config.num_labels == 4 and model.config.hidden_dropout_prob == 0.0
    assert model.classifier.weight.shape == (4, 32)
    embeddings = (64 + 32 + 2) * 32 + 2 * 32  # words, positions, token types; LayerNorm
    layer = 4 * (32 * 32 + 32) + 2 * (32 * 64) + 64 + 32 + 2 * 2 * 32
    assert n_params(model) == embeddings + 2 * layer + (32 * 32 + 32) + (4 * 32 + 4) == 21_476
    out = model(torch.randint(1, 64, (3, 16)))
    assert out.logits.shape == (3, 4)


@needs_transformers
def test_hf_architectures_picks_the_class(tmp_path):
    tr = import_transformers()
    arch = write_json(
        tmp_path / "c.json", {**BERT, "architectures": ["BertForSequenceClassification"]}
    )
    model = create_model(f"hf:{arch}", num_classes=2, in_channels=None)
    assert type(model) is tr.BertForSequenceClassification


@needs_transformers
def test_hf_vision_config_gets_num_channels(tmp_path):
    tr = import_transformers()
    write_json(tmp_path / "config.json", VIT)
    model = build_model(recipe_for({"name": f"hf:{tmp_path}"}), 5, 1)  # a directory: config.json
    assert type(model) is tr.ViTForImageClassification
    assert model.config.num_channels == 1 and model.config.num_labels == 5
    assert model.vit.embeddings.patch_embeddings.projection.weight.shape == (32, 1, 4, 4)
    assert model(torch.randn(2, 1, 16, 16)).logits.shape == (2, 5)


# ---- one-line errors -----------------------------------------------------------------------


def _one_line(fn, *args):
    with pytest.raises(ConfigError) as e:
        fn(*args)
    text = str(e.value)
    assert "\n" not in text
    return text


@needs_torchvision
@needs_timm
@pytest.mark.parametrize(
    "model, message",
    [
        (
            {"name": "torchvision:resnet5O"},
            "model.name: unknown torchvision model 'resnet5O' (did you mean 'resnet50'?)",
        ),
        (
            {"name": "timm:convnext_nan"},
            "model.name: unknown timm model 'convnext_nan' (did you mean 'convnext_nano'?)",
        ),
        (
            {"name": "tochvision:resnet18"},
            "unknown model source 'tochvision' (did you mean 'torchvision'?); write "
            "torchvision:NAME, timm:NAME or hf:CONFIG.json",
        ),
        ({"name": "timm:"}, "model 'timm:': no name after 'timm:'"),
        (
            {"name": "resnet2"},
            "(did you mean 'resnet32'?)",
        ),
        (
            {"name": "timm:convnext_atto", "pretrained": True},
            "model.pretrained: not an option of model 'timm:convnext_atto': weights are never "
            "downloaded; start from trained weights with --init",
        ),
        (
            {"name": "torchvision:resnet18", "options": {"weights": "DEFAULT"}},
            "model.options.weights: not an option of model 'torchvision:resnet18'",
        ),
        (
            {"name": "timm:convnext_atto", "in_chans": 1},
            "model.in_chans: not an option of model 'timm:convnext_atto': the input channels "
            "come from the data (or model.in_channels)",
        ),
    ],
)
def test_bad_names_and_reserved_options_fail_when_the_recipe_is_read(model, message):
    assert message in _one_line(recipe_for, model)


def test_a_zoo_name_miss_mentions_the_prefixes():
    text = _one_line(recipe_for, {"name": "resnet2"})
    assert text.endswith(
        "; or bring one: torchvision:resnet18, timm:convnext_nano or hf:path/to/config.json"
    )


@needs_torchvision
@needs_timm
@pytest.mark.parametrize(
    "model, message",
    [
        (
            {"name": "timm:convnext_atto", "drop_path_rat": 0.1},
            "model.drop_path_rat: 'timm:convnext_atto' has no option 'drop_path_rat' (did you "
            "mean 'drop_path_rate'?); allowed: global_pool, output_stride, depths, dims,",
        ),
        (
            {"name": "torchvision:resnet18", "zero_init_residul": True},
            "model.zero_init_residul: 'torchvision:resnet18' has no option 'zero_init_residul' "
            "(did you mean 'zero_init_residual'?); allowed: zero_init_residual, groups, "
            "width_per_group, replace_stride_with_dilation, norm_layer",
        ),
        (
            {"name": "timm:convnext_atto", "drop_path_rate": "x"},
            "model 'timm:convnext_atto' with drop_path_rate='x': ",
        ),
    ],
)
def test_options_the_constructor_refuses_are_one_line(model, message):
    assert message in _one_line(build_model, recipe_for(model), 10, 1)


@needs_transformers
def test_hf_config_file_errors_name_the_path(tmp_path, bert_json):
    missing = tmp_path / "nope.json"
    assert _one_line(recipe_for, {"name": f"hf:{missing}"}) == (
        f"model.name: Hugging Face config {missing}: file not found; give the path of a config.json"
    )
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_type": "bert",\n "hidden_size": }')
    assert _one_line(recipe_for, {"name": f"hf:{bad}"}) == (
        f"model.name: Hugging Face config {bad}: invalid JSON at line 2, column 17: Expecting value"
    )
    notype = write_json(tmp_path / "notype.json", {"hidden_size": 8})
    assert f"Hugging Face config {notype}: no 'model_type' key" in _one_line(
        recipe_for, {"name": f"hf:{notype}"}
    )
    typo = write_json(tmp_path / "typo.json", {"model_type": "bertt"})
    assert f"{typo}: unknown model_type 'bertt' (did you mean 'bert'?)" in _one_line(
        recipe_for, {"name": f"hf:{typo}"}
    )
    mlm = write_json(tmp_path / "mlm.json", {**BERT, "architectures": ["BertForMaskedLM"]})
    assert f"{mlm}: architectures names 'BertForMaskedLM', not a sequence or image " in _one_line(
        recipe_for, {"name": f"hf:{mlm}"}
    )
    name = f"hf:{bert_json}"
    assert _one_line(recipe_for, {"name": name, "hiden_size": 8}).startswith(
        f"model.hiden_size: '{name}' has no config key 'hiden_size' (did you mean 'hidden_size'?)"
    )
    assert _one_line(recipe_for, {"name": name, "hidden_size": "big"}) == (
        f"model.hidden_size: '{name}' takes an integer (the config has 32), got 'big'"
    )
    assert "the classes come from the data" in _one_line(
        recipe_for, {"name": name, "num_labels": 3}
    )


@needs_transformers
def test_hf_model_and_data_must_fit(tmp_path, bert_json):
    name = f"hf:{bert_json}"
    heads = write_json(tmp_path / "heads.json", {**BERT, "hidden_size": 30})
    assert _one_line(build_model, recipe_for({"name": f"hf:{heads}"}, TOKENS), 4, None) == (
        f"model 'hf:{heads}': cannot build BertForSequenceClassification: The hidden size (30) "
        "is not a multiple of the number of attention heads (4)"
    )
    assert _one_line(build_model, recipe_for({"name": name}), 10, 1).startswith(
        f"model '{name}' is a text model (it reads token ids) and dataset 'synthetic' holds images"
    )
    assert _one_line(build_model, recipe_for({"name": "resnet_tiny"}, TOKENS), 4, None).startswith(
        "model 'resnet_tiny' reads images and dataset 'synthetic-tokens' holds token ids"
    )
    big = recipe_for({"name": name}, {**TOKENS, "vocab_size": 100})
    assert _one_line(build_model, big, 4, None) == (
        f"model '{name}': vocab_size 64 is smaller than the 100 token ids of dataset "
        "'synthetic-tokens'; raise vocab_size (in the config or as model.vocab_size) or lower "
        "data.vocab_size"
    )
    long = recipe_for({"name": name}, {**TOKENS, "seq_len": 33})
    assert "max_position_embeddings 32 is smaller than the 33 positions" in _one_line(
        build_model, long, 4, None
    )
    fixed = recipe_for({"name": name, "in_channels": 3}, TOKENS)
    assert _one_line(build_model, fixed, 4, None) == (
        "model.in_channels: does not apply to dataset 'synthetic-tokens', whose inputs are "
        "token ids; leave it unset"
    )
    wide = build_model(
        recipe_for({"name": name, "vocab_size": 100}, {**TOKENS, "vocab_size": 100}), 4, None
    )
    assert wide.bert.embeddings.word_embeddings.weight.shape == (100, 32)


@pytest.mark.parametrize("package", ["torchvision", "timm", "transformers"])
def test_a_missing_package_names_the_extra(monkeypatch, tmp_path, package):
    name = {"torchvision": "torchvision:resnet18", "timm": "timm:resnet18"}.get(
        package, f"hf:{write_json(tmp_path / 'c.json', BERT)}"
    )
    real_find, real_import = importlib.util.find_spec, importlib.import_module

    def find_spec(mod, *args):
        return None if mod == package else real_find(mod, *args)

    def import_module(mod, *args):
        if mod == package:
            raise ModuleNotFoundError(f"No module named '{mod}'")
        return real_import(mod, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib, "import_module", import_module)
    assert _one_line(recipe_for, {"name": name}) == (
        f"model.name: {package} is not installed; install it (pip install "
        "'sparsegrain[models]' pins versions that keep torch as it is)"
    )


@needs_timm
def test_an_external_model_section_round_trips(tmp_path):
    rec = recipe_for({"name": "timm:convnext_atto", "options": {"drop_path_rate": 0.1}, **ATTO})
    assert rec.model.to_dict() == {"name": "timm:convnext_atto", "drop_path_rate": 0.1, **ATTO}
    again = load_recipe(yaml.safe_load(rec.dump()))
    assert again.model.to_dict() == rec.model.to_dict()


def test_list_models_shows_the_prefixes(capsys):
    assert cli.main(["list", "models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    forms = [line.split()[0] for line in lines[-3:]]
    assert forms == ["torchvision:NAME", "timm:NAME", "hf:CONFIG.json"]
    assert all(line.endswith("pip install 'sparsegrain[models]'") for line in lines[-3:])


# ---- the token dataset ---------------------------------------------------------------------


def test_token_set_is_deterministic_balanced_and_follows_its_rule():
    a = make_tokens(4, 65, 16, 64, 32, seed=0)
    b = make_tokens(4, 65, 16, 64, 32, seed=0)
    c = make_tokens(4, 65, 16, 64, 32, seed=1)
    for split in ("train", "test"):
        assert torch.equal(a[split][0], b[split][0]) and torch.equal(a[split][1], b[split][1])
    assert not torch.equal(a["train"][0], c["train"][0])
    x, y = a["train"]
    assert x.shape == (64, 16) and x.dtype == torch.int64 and y.dtype == torch.int64
    assert int(x.min()) >= 1 and int(x.max()) <= 64
    assert torch.bincount(y, minlength=4).tolist() == [16, 16, 16, 16]
    # blocks of 16 ids: 1..16 is class 0, 17..32 class 1, ...; the own block holds the most ids
    blocks = torch.stack([((x - 1) // 16 == k).sum(1) for k in range(4)], 1)
    assert float((blocks.argmax(1) == y).float().mean()) >= 0.9
    assert torch.equal(blocks.sum(1), torch.full((64,), 16))


def test_token_dataset_in_the_catalog():
    assert dataset_inputs("synthetic_tokens") == "tokens" and dataset_inputs("mnist") == "images"
    data = build_data(DataConfig(**TOKENS))
    assert (data.num_classes, data.in_channels, data.image_size) == (4, None, None)
    assert (data.vocab_size, data.seq_len, data.train_size, data.test_size) == (64, 16, 64, 32)
    x, y = next(iter(data.train))
    assert x.shape == (16, 16) and x.dtype == torch.int64 and y.shape == (16,)
    assert len(data.train) == 4 and len(data.test) == 1
    again = build_data(DataConfig(**TOKENS))
    assert torch.equal(next(iter(again.test))[0], next(iter(data.test))[0])


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {**TOKENS, "vocab_size": 4},
            "data.vocab_size 4 is too small for 4 classes: ids 1 .. vocab_size - 1 are cut into "
            "one block per class; use vocab_size >= 5",
        ),
        (
            {"name": "synthetic", "vocab_size": 100},
            "data.vocab_size=100 does not apply to dataset 'synthetic'; only to: "
            "synthetic-tokens (leave it unset)",
        ),
        (
            {**TOKENS, "image_size": 8},
            "data.image_size=8 does not apply to dataset 'synthetic-tokens'",
        ),
        ({**TOKENS, "seq_len": 0}, "data.seq_len must be an integer >= 1, got 0"),
    ],
)
def test_token_dataset_keys_are_checked(data, message):
    assert message in _one_line(DataConfig(**data).validate)


# ---- the analyses on model outputs that are not tensors ------------------------------------


@needs_transformers
def test_accuracy_and_sensitivity_read_hf_logits(bert_json):
    torch.manual_seed(0)
    rec = recipe_for({"name": f"hf:{bert_json}"}, TOKENS)
    data = build_data(rec.data)
    model = build_model(rec, data.num_classes, data.in_channels).eval()
    x, y = next(iter(data.test))
    with torch.no_grad():
        expected = 100.0 * float((model(x).logits.argmax(1) == y).float().mean())
    acc = evaluate(model, data.test, channels_last=True)  # ignored for token ids
    assert acc["top1"] == pytest.approx(expected)
    layer = "bert.encoder.layer.0.attention.self.query"
    sens = layer_sensitivity(model, data.test, [layer], "fine", [0.0, 0.5])
    assert sens.baseline == pytest.approx(expected)
    assert list(sens) == [layer] and sens[layer][0.0] == sens.baseline
    assert sens.params == {layer: 32 * 32}
    with pytest.raises(ConfigError, match="the attacks move pixels, and this loader yields token"):
        attack_accuracy(model, data.test, attack="fgsm", epsilons=[0.01])


# ---- the CLI -------------------------------------------------------------------------------


def idx_dir(root, n_train=64, n_test=32):
    """MNIST-layout IDX files of 28x28 images: a bright square whose corner is the label % 4."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = {"train": "train", "test": "t10k"}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 64, size=(n, 28, 28), dtype=np.uint8)
        for i, k in enumerate(labels):
            r, c = 14 * (k % 2), 14 * ((k // 2) % 2)
            images[i, r : r + 14, c : c + 14] = 255
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            head = struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape)
            path = root / f"{names[split]}-{kind}-ubyte.gz"
            path.write_bytes(gzip.compress(head + array.tobytes()))
    return root


# Campfire masks at 50% fine sparsity set at the first step and frozen from then on.
FIRST_STEP = {
    "method": "campfire",
    "structure": "fine",
    "target": 0.5,
    "start": 0,
    "end": 0.5,
    "frequency": 1,
}


def cli_recipe(tmp_path, model, data, sparsity=None, epochs=1, lr=0.05):
    path = tmp_path / "recipe.yaml"
    recipe = {
        "model": model,
        "data": data,
        "train": {"epochs": epochs, "lr": lr, "progress": False, "threads": 1},
        "sparsity": sparsity or {"method": "dense"},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


@needs_torchvision
@pytest.mark.slow
def test_cli_trains_and_analyzes_a_torchvision_model_on_idx_files(tmp_path, capsys):
    root = idx_dir(tmp_path / "mnist")
    model = {"name": "torchvision:mobilenet_v3_small", "width_mult": 0.25}
    data = {"name": "mnist", "root": str(root), "batch_size": 32, "test_batch_size": 32}
    recipe = cli_recipe(tmp_path, model, data, FIRST_STEP)
    out = tmp_path / "run"
    assert train_cli("--recipe", recipe, "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["sparsity"] == 0.5
    weights, meta = load_tensors(out / "model.safetensors")
    assert meta["model"] == {"name": "torchvision:mobilenet_v3_small", "width_mult": 0.25}
    fresh = create_model(
        "torchvision:mobilenet_v3_small", num_classes=10, in_channels=1, width_mult=0.25
    )
    fresh.load_state_dict(weights)
    assert weights["features.0.0.weight"].shape == (8, 1, 3, 3)
    capsys.readouterr()
    args = ["analyze", "--run", str(out), "--sensitivity", "--no-progress", "--max-batches", "1"]
    assert cli.main(args) == 0
    result = json.loads((out / "analysis.json").read_text())
    assert result["model"] == "torchvision:mobilenet_v3_small"
    assert result["accuracy"]["top1"] == pytest.approx(summary["top1"])
    pruned = [r["name"] for r in summary["layers"] if r["structure"] != "dense"]
    assert set(result["sensitivity"]["curves"]) == set(pruned)


@needs_transformers
@pytest.mark.slow
def test_cli_trains_and_analyzes_an_hf_bert_on_tokens(tmp_path, bert_json, capsys):
    model = {"name": f"hf:{bert_json}"}
    recipe = cli_recipe(tmp_path, model, TOKENS, FIRST_STEP)
    out = tmp_path / "run"
    assert train_cli("--recipe", recipe, "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    pruned = [r for r in summary["layers"] if r["structure"] != "dense"]
    assert len(pruned) == 13 and all(r["achieved"] == 0.5 for r in pruned)  # 12 + the pooler
    assert [r["name"] for r in summary["layers"] if r["structure"] == "dense"] == ["classifier"]
    capsys.readouterr()
    args = ["analyze", "--run", str(out), "--sensitivity", "--no-progress"]
    assert cli.main(args) == 0
    result = json.loads((out / "analysis.json").read_text())
    assert result["accuracy"]["top1"] == pytest.approx(summary["top1"])
    sens = result["sensitivity"]
    assert set(sens["curves"]) == {r["name"] for r in pruned}
    assert sens["baseline_top1"] == pytest.approx(summary["top1"])
    assert cli.main(["analyze", "--run", str(out), "--attacks", "fgsm", "--force"]) == 2
    assert "the attacks move pixels" in capsys.readouterr().err


@needs_transformers
@pytest.mark.slow
def test_a_tiny_bert_learns_the_token_rule_in_one_epoch(tmp_path, bert_json):
    data = {**TOKENS, "synthetic_train": 2048, "synthetic_test": 128, "test_batch_size": 128}
    recipe = cli_recipe(tmp_path, {"name": f"hf:{bert_json}"}, data, lr=0.03)
    out = tmp_path / "run"
    assert train_cli("--recipe", recipe, "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["top1"] >= 50.0  # chance: 25%; 69.5 measured, 26.6 with no class signal
