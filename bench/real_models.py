"""Structured pruning that pays off on the models users bring: torchvision, timm, Hugging Face.

Reproduce (CPU, random init, nothing downloaded; needs the ``models`` extra):

    .venv/bin/python bench/real_models.py [--models resnet50,vit_b_16] [--size 64]
        [--json bench/results/real_models.json] [--no-onnx]

For each model: one-shot magnitude pruning at 50% (``sparsify_`` with method ``oneshot``,
``couple: true``, the default exclusions: first conv and classifier) with the structure that
removes whole units on it (``filter`` for convs and Linears, ``neuron`` for MLP hidden units,
``head`` for attention), then ``finalize_`` and ``compact``. Printed per model: parameters and
MACs dense / compacted / ideal (every zero filter, neuron and head removed, pinned or not), the
fraction of the ideal reduction reached, how many layers were pruned (and how many ``couple``
left dense because compaction could not have removed their filters), how many layers keep zero
filters (each has a note),
the max abs diff between the compacted and the masked model on the example input, the tracer
used, and the ONNX check (onnxruntime vs the compacted model, max abs diff).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sparsegrain
from sparsegrain.core.tables import format_table
from sparsegrain.deploy.compact import compact
from sparsegrain.models.external import import_timm, import_torchvision, import_transformers

CNN = {"structure": "filter"}


# Transformers: MLP hidden units as neurons, attention heads whole; the residual stream feeds
# LayerNorms (compaction cannot remove its channels) and is left alone.
def vit(attention: str) -> dict:
    return {"structure": "neuron", "overrides": {attention: {"structure": "head"}}}


def tv(name, **kw):
    return lambda: getattr(import_torchvision().models, name)(num_classes=10, **kw)


def timm(name, **kw):
    return lambda: import_timm().create_model(name, pretrained=False, num_classes=10, **kw)


def hf_bert():
    t = import_transformers()
    cfg = t.BertConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
        vocab_size=1000, num_labels=10,
    )  # fmt: skip
    return t.BertForSequenceClassification(cfg)


def hf_vit():
    t = import_transformers()
    cfg = t.ViTConfig(
        image_size=64, patch_size=8, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=512, num_labels=10,
    )  # fmt: skip
    return t.ViTForImageClassification(cfg)


def hf_gpt2():
    t = import_transformers()
    cfg = t.GPT2Config(
        n_embd=128, n_layer=2, n_head=4, vocab_size=1000, n_positions=64, use_cache=False
    )
    return t.GPT2LMHeadModel(cfg)


def image(size):
    return lambda: torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def tokens():
    return torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))


# name -> (factory, recipe part, example input factory)
MODELS = {
    "resnet50": (tv("resnet50"), CNN, image),
    "mobilenet_v2": (tv("mobilenet_v2"), CNN, image),
    "efficientnet_b0": (tv("efficientnet_b0"), CNN, image),
    "regnet_y_400mf": (tv("regnet_y_400mf"), CNN, image),
    "convnext_tiny": (tv("convnext_tiny"), CNN, image),
    "densenet121": (tv("densenet121"), CNN, image),
    "shufflenet_v2_x1_0": (tv("shufflenet_v2_x1_0"), CNN, image),
    "vit_b_16": (tv("vit_b_16", image_size=64), vit("*self_attention*"), image),
    "timm:convnext_nano": (timm("convnext_nano"), CNN, image),
    "timm:efficientnet_b0": (timm("efficientnet_b0"), CNN, image),
    "timm:vit_small_patch16_224": (
        timm("vit_small_patch16_224", img_size=64),
        vit("*attn*"),
        image,
    ),
    "hf:bert": (hf_bert, vit("*attention*"), lambda size: tokens),
    "hf:vit": (hf_vit, vit("*attention*"), lambda size: image(64)),
    "hf:gpt2": (
        hf_gpt2,
        {"structure": "neuron", "overrides": {"*.attn.c_*": {"structure": "head"}}},
        lambda size: tokens,
    ),
}


def run(name: str, size: int, onnx: bool) -> dict:
    factory, part, example = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = example(size)()
    recipe = {"method": "oneshot", "target": 0.5, "couple": True, **part}
    t0 = time.perf_counter()
    sp = sparsegrain.sparsify_(model, recipe, steps_per_epoch=1, example_inputs=x)
    left_dense = sum(1 for layer in sp.layers if layer.note.startswith("left dense"))
    pruned = sum(1 for layer in sp.layers if layer.structure is not None)
    sparsegrain.finalize_(model)
    r = compact(model, x)
    seconds = time.perf_counter() - t0
    row = {
        "model": name,
        "layers": {"pruned": pruned, "left_dense": left_dense, "targeted": len(sp.layers)},
        "params": [r.params_before, r.params_after, r.params_ideal],
        "macs": [r.macs_before, r.macs_after, r.macs_ideal],
        "reached": r.reached,
        "noted_layers": sum(1 for texts in r.notes.values() if any("zero" in t for t in texts)),
        "max_abs_diff": r.max_abs_diff,
        "tracer": r.tracer,
        "seconds": round(seconds, 1),
        "heads": {k: len(v) for k, v in r.heads.items()},
    }
    if onnx:
        row["onnx"] = _onnx(r.model, x)
    return row


def _onnx(model, x) -> str:
    import tempfile

    from sparsegrain.deploy import onnx as sg_onnx

    with tempfile.TemporaryDirectory() as d:
        try:
            res = sg_onnx.export_onnx(model, x, Path(d) / "m.onnx")
        except Exception as e:  # noqa: BLE001 (reported in the table)
            return f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
    return f"{res['exporter']} diff {res['max_abs_diff']:.1e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-onnx", action="store_true")
    a = ap.parse_args()
    rows = []
    for name in a.models.split(","):
        try:
            rows.append(run(name, a.size, not a.no_onnx))
        except Exception as e:  # noqa: BLE001 (one failing model does not stop the table)
            rows.append({"model": name, "error": f"{type(e).__name__}: {e}"[:300]})
        print(json.dumps(rows[-1]), flush=True)
    table = []
    for row in rows:
        if "error" in row:
            table.append([row["model"], "error", "", "", "", "", row["error"][:60]])
            continue
        p, m = row["params"], row["macs"]
        table.append([
            row["model"],
            f"{p[0] / 1e6:.2f}M -> {p[1] / 1e6:.2f}M ({p[2] / 1e6:.2f}M)",
            f"{m[0] / 1e6:.1f}M -> {m[1] / 1e6:.1f}M ({m[2] / 1e6:.1f}M)",
            f"{row['reached']['params']:.0%} / {row['reached']['macs']:.0%}",
            str(row["noted_layers"]),
            f"{row['max_abs_diff']:.1e}",
            row.get("onnx", "-"),
        ])  # fmt: skip
    heads = ["model", "params (ideal)", "MACs (ideal)", "reached", "noted", "diff", "onnx"]
    print(format_table(table, heads))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
