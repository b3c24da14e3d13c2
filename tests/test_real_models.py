"""The models users bring (torchvision, timm, Hugging Face; tiny configs, random init): 50%
filter / neuron / head pruning with ``couple``, then ``compact``, must remove what the masks
promise (within 10% of the ideal parameter and MAC reduction), leave no zero filter behind
without a note, and match the masked model's outputs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import sparsegrain
from sparsegrain.deploy.compact import compact, load_compact, save_compact
from sparsegrain.models import external

if not all(importlib.util.find_spec(p) for p in ("torchvision", "timm", "transformers")):
    pytest.skip("the models extra is not installed", allow_module_level=True)

TV = external.import_torchvision()
TIMM = external.import_timm()
HF = external.import_transformers()
CNN = {"structure": "filter"}


def vit(attention: str) -> dict:
    return {"structure": "neuron", "overrides": {attention: {"structure": "head"}}}


def image(size=32):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def tokens():
    return torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))


def tv_convnext():
    cfg = TV.models.convnext.CNBlockConfig
    return TV.models.ConvNeXt([cfg(16, 32, 1), cfg(32, 64, 1), cfg(64, None, 1)], num_classes=10)


def tv_densenet():
    return TV.models.DenseNet(
        growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=10
    )


def tv_vit():
    return TV.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )  # fmt: skip


def timm_model(name, **kw):
    return lambda: TIMM.create_model(name, pretrained=False, num_classes=10, **kw)


def hf_bert():
    cfg = HF.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=100, num_labels=3,
    )  # fmt: skip
    return HF.BertForSequenceClassification(cfg)


def hf_vit():
    cfg = HF.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=3,
    )  # fmt: skip
    return HF.ViTForImageClassification(cfg)


def hf_distilbert():
    cfg = HF.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=100)
    return HF.DistilBertForSequenceClassification(cfg)


def hf_albert():
    cfg = HF.AlbertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=100, embedding_size=16,
    )  # fmt: skip
    return HF.AlbertForSequenceClassification(cfg)


def hf_gpt2():
    cfg = HF.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=16)
    return HF.GPT2LMHeadModel(cfg)


# name -> (factory, recipe part, example input)
MODELS = {
    "tv_resnet18": (lambda: TV.models.resnet18(num_classes=10), CNN, image),
    "tv_mobilenet_v2": (
        lambda: TV.models.mobilenet_v2(num_classes=10, width_mult=0.25),
        CNN,
        image,
    ),
    "tv_efficientnet_b0": (lambda: TV.models.efficientnet_b0(num_classes=10), CNN, image),
    "tv_regnet_y_400mf": (lambda: TV.models.regnet_y_400mf(num_classes=10), CNN, image),
    "tv_convnext": (tv_convnext, CNN, image),
    "tv_densenet": (tv_densenet, CNN, image),
    "tv_shufflenet_v2": (lambda: TV.models.shufflenet_v2_x0_5(num_classes=10), CNN, image),
    "tv_vit": (tv_vit, vit("*self_attention*"), image),
    "timm_convnext": (
        timm_model("convnext_atto", dims=(16, 32, 64, 128), depths=(1, 1, 1, 1)),
        CNN,
        image,
    ),
    "timm_efficientnet": (timm_model("efficientnet_lite0"), CNN, image),
    "timm_vit": (
        timm_model(
            "vit_small_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=4
        ),
        vit("*attn*"),
        image,
    ),
    "hf_bert": (hf_bert, vit("*attention*"), tokens),
    "hf_vit": (hf_vit, vit("*attention*"), image),
    "hf_gpt2": (hf_gpt2, vit("*.attn.c_*"), tokens),
    "hf_distilbert": (hf_distilbert, vit("*attention*"), tokens),
    "hf_albert": (hf_albert, vit("*attention*"), tokens),  # one layer shared by both depths
}
SLOW = {"tv_efficientnet_b0", "tv_regnet_y_400mf", "tv_resnet18"}


def pruned(name):
    factory, part, example = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = example()
    recipe = {"method": "oneshot", "target": 0.5, "couple": True, **part}
    sp = sparsegrain.sparsify_(model, recipe, steps_per_epoch=1, example_inputs=x)
    return model, sp, x


def zero_filters(model) -> set[str]:
    """Conv/Linear layers with a filter (output unit) that is all zero."""
    out = set()
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        layer = isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and isinstance(w, torch.Tensor)
        if layer and bool((w.reshape(w.shape[0], -1) == 0).all(dim=1).any()):
            out.add(name)
    return out


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS]
)
def test_compaction_reaches_the_ideal_and_notes_what_it_keeps(name):
    model, sp, x = pruned(name)
    pruned_layers = [layer for layer in sp.layers if layer.structure is not None]
    assert pruned_layers, "something must be pruned"
    sparsegrain.finalize_(model)
    r = compact(model, x)
    assert r.params_after < r.params_before and r.macs_after < r.macs_before
    assert r.reached["params"] >= 0.9 and r.reached["macs"] >= 0.9, r.format()
    assert r.max_abs_diff <= 1e-4
    assert zero_filters(r.model) <= set(r.notes), r.format()


def test_attention_heads_and_neurons_are_removed_exactly_on_bert():
    model, sp, x = pruned("hf_bert")
    sparsegrain.finalize_(model)
    r = compact(model, x)
    assert r.heads == {
        "bert.encoder.layer.0.attention.self": r.heads["bert.encoder.layer.0.attention.self"],
        "bert.encoder.layer.1.attention.self": r.heads["bert.encoder.layer.1.attention.self"],
    }
    assert all(len(kept) == 2 for kept in r.heads.values())
    layer = r.model.bert.encoder.layer[0]
    assert layer.attention.self.num_attention_heads == 2
    assert tuple(layer.attention.self.query.weight.shape) == (16, 32)
    assert tuple(layer.attention.output.dense.weight.shape) == (32, 16)
    assert tuple(layer.intermediate.dense.weight.shape) == (32, 32)  # 64 neurons -> 32
    assert tuple(layer.output.dense.weight.shape) == (32, 32)
    # the residual stream (read by LayerNorms) is left whole: its writers were left dense
    notes = {row["name"]: row["note"] for row in sp.report()}
    assert notes["bert.encoder.layer.0.output.dense"].startswith(
        "left dense: compaction cannot remove its filters (LayerNorm"
    )
    assert r.tracer == sparsegrain.graph.RUN


def test_compacted_transformer_saves_and_loads(tmp_path):
    model, _, x = pruned("timm_vit")
    sparsegrain.finalize_(model)
    r = compact(model, x)
    assert r.heads and r.layers
    save_compact(tmp_path / "m.safetensors", r, None)
    fresh = MODELS["timm_vit"][0]()
    loaded, meta = load_compact(tmp_path / "m.safetensors", model=fresh)
    assert meta["heads"] == r.heads
    assert torch.allclose(loaded(x), r.model(x), atol=1e-6)
    assert sum(p.numel() for p in loaded.parameters()) == r.params_after


def test_convnext_layer_scale_and_depthwise_follow_the_neurons():
    model, _, x = pruned("tv_convnext")
    sparsegrain.finalize_(model)
    r = compact(model, x)
    block = r.model.features[1][0].block  # dwconv, permute, LayerNorm, Linear, GELU, Linear
    assert block[3].out_features == 32 and block[5].in_features == 32  # 64 neurons -> 32
    assert block[0].out_channels == 16  # the stream (LayerNorm) is kept whole
    assert "features.1.0.layer_scale" not in r.layers


def test_cli_trains_exports_compacted_bert_heads_and_neurons(tmp_path, capsys):
    import json

    import yaml

    from sparsegrain import cli

    config = tmp_path / "bert.json"
    HF.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=64, max_position_embeddings=32,
    ).to_json_file(config)  # fmt: skip
    sparsity = {
        "method": "campfire", "structure": "neuron", "target": 0.5, "start": 0, "end": 0.5,
        "frequency": 1, "couple": True, "overrides": {"*attention*": {"structure": "head"}},
    }  # fmt: skip
    data = {
        "name": "synthetic-tokens", "vocab_size": 64, "seq_len": 16, "synthetic_train": 64,
        "synthetic_test": 32, "batch_size": 16, "test_batch_size": 32,
    }  # fmt: skip
    recipe = {
        "model": {"name": f"hf:{config}"},
        "data": data,
        "train": {"epochs": 1, "lr": 0.05, "progress": False, "threads": 1},
        "sparsity": sparsity,
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    assert cli.main(["train", "--recipe", str(tmp_path / "recipe.yaml"), "--out", str(run)]) == 0
    out = tmp_path / "bert.safetensors"
    assert cli.main(["export", "--run", str(run), "--compact", "--out", str(out)]) == 0
    record = capsys.readouterr().out
    assert "compacted: params" in record
    _, meta = load_compact(out)
    assert {k: len(v) for k, v in meta["heads"].items()} == {
        "bert.encoder.layer.0.attention.self": 2,
        "bert.encoder.layer.1.attention.self": 2,
    }
    assert meta["layers"]["bert.encoder.layer.0.intermediate.dense"]["out"] is not None
    assert len(meta["layers"]["bert.encoder.layer.0.intermediate.dense"]["out"]) == 32
    onnx_out = tmp_path / "bert.onnx"
    assert cli.main(["export", "--run", str(run), "--compact", "--format", "onnx",
                     "--out", str(onnx_out)]) == 0  # fmt: skip
    assert onnx_out.stat().st_size > 0
    summary = json.loads((run / "summary.json").read_text())
    assert {r["structure"] for r in summary["layers"]} >= {"neuron"}
