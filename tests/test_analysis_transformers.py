"""The analyses on transformer layers: Hugging Face Conv1D weights (stored (in, out)) counted in
their (out, in) view, the fused ``in_proj_weight`` of ``nn.MultiheadAttention`` in the memory
reference model, and ``analyze --attacks`` refused on token data before any work."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest
import torch
import yaml
from torch import nn

from sparsegrain import cli
from sparsegrain.analysis import analyze as analyze_module
from sparsegrain.analysis.accelerator import SCNNConfig, layer_refs, model_refs
from sparsegrain.analysis.analyze import gemm_views
from sparsegrain.analysis.flops import layer_weights, profile
from sparsegrain.analysis.storage import layer_storage
from sparsegrain.core.io import save_tensors
from sparsegrain.models.external import import_transformers
from sparsegrain.recipe import load_recipe
from sparsegrain.recipe.build import build_model

needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="transformers is not installed"
)

# GPT-2 of width 32 (4 heads, 2 blocks) over 100 token ids and 16 positions; id 0 pads.
GPT2 = {
    "model_type": "gpt2",
    "n_embd": 32,
    "n_layer": 2,
    "n_head": 4,
    "vocab_size": 100,
    "n_positions": 16,
    "pad_token_id": 0,
}
TOKENS = {
    "name": "synthetic-tokens",
    "vocab_size": 100,
    "seq_len": 16,
    "synthetic_train": 32,
    "synthetic_test": 16,
    "batch_size": 16,
    "test_batch_size": 16,
}
C_ATTN = "transformer.h.0.attn.c_attn"  # Conv1D stored (32, 96): (in, out)


def _gpt2():
    tr = import_transformers()
    torch.manual_seed(0)
    model = tr.GPT2ForSequenceClassification(tr.GPT2Config(**GPT2, num_labels=4)).eval()
    with torch.no_grad():
        model.get_submodule(C_ATTN).weight[:, :48] = 0.0  # output units 0..47: filters
    return model


# ---- Conv1D in the (out, in) view --------------------------------------------------------------


@needs_transformers
def test_gemm_views_transpose_conv1d_weights_and_geometries():
    model = _gpt2()
    ids = torch.randint(1, 100, (2, 8))
    stored = model.get_submodule(C_ATTN).weight
    geoms, weights = gemm_views(model, profile(model, ids))
    assert tuple(stored.shape) == (32, 96)
    assert weights[C_ATTN].shape == (96, 32) and torch.equal(weights[C_ATTN], stored.t())
    g = next(g for g in geoms if g.name == C_ATTN)
    assert (g.weight_shape, g.in_shape, g.out_shape) == ((96, 32), (32, 1, 8), (96, 1, 8))
    fc = next(g for g in geoms if g.name == "transformer.h.1.mlp.c_fc")
    assert fc.weight_shape == (128, 32) and weights[fc.name].shape == (128, 32)
    score = next(g for g in geoms if g.name == "score")  # a Linear: already (out, in)
    assert score.weight_shape == (4, 32) and torch.equal(weights["score"], model.score.weight)
    # the weights of every other use are kept: the position and token embeddings
    assert weights["transformer.wte"].shape == (100, 32)
    assert [g.name for g in geoms] == [g.name for g in profile(model, ids)]


@needs_transformers
def test_filter_structure_of_a_conv1d_is_counted_on_its_output_units():
    """Zeroing 48 of the 96 output units of ``c_attn`` is 48 empty filters: the accelerator
    model indexes 48 kept filters, not the 32 rows of the stored tensor."""
    model = _gpt2()
    geoms, weights = gemm_views(model, profile(model, torch.randint(1, 100, (2, 16))))
    res = model_refs(geoms, weights, {C_ATTN: "filter"})
    row = next(r for r in res["layers"] if r["name"] == C_ATTN)
    # T = 8 tiles (16 positions over 8 PE columns); 48 kept filters x 32 inputs
    assert row["tiles"] == 8 and row["structure"] == "filter"
    assert row["weight"] == 48 * 32 * 8
    assert row["weight_index"] == 48 * 8  # one index per kept filter and tile
    g = next(g for g in geoms if g.name == C_ATTN)
    direct = layer_refs(g, weights[C_ATTN], cfg=SCNNConfig(), structure="filter")
    assert row == {"name": C_ATTN, "structure": "filter", **direct}
    stored = model.get_submodule(C_ATTN).weight.detach()
    wrong = layer_refs(replace(g, weight_shape=(32, 96)), stored, structure="filter")
    assert wrong["weight_index"] == 32 * 8  # what the stored (in, out) view would have said


def _write_gpt2_run_inputs(tmp_path):
    config = tmp_path / "gpt2.json"
    config.write_text(json.dumps(GPT2))
    recipe = {"model": {"name": f"hf:{config}"}, "data": TOKENS}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    torch.manual_seed(0)
    model = build_model(load_recipe(recipe), 4, None)
    with torch.no_grad():
        model.get_submodule(C_ATTN).weight[:, :48] = 0.0
    weights = tmp_path / "gpt2.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_tensors(weights, state, {})
    return path, weights, model


@needs_transformers
def test_analyze_counts_gpt2_conv1d_storage_flops_and_refs_in_the_out_in_view(tmp_path):
    recipe, weights, model = _write_gpt2_run_inputs(tmp_path)
    out = tmp_path / "a.json"
    args = ["analyze", "--weights", str(weights), "--recipe", str(recipe), "--structure",
            "filter", "--out", str(out), "--no-progress"]  # fmt: skip
    assert cli.main(args) == 0
    result = json.loads(out.read_text())
    # only c_attn holds zeros, so only it gets --structure
    assert {n: s for n, s in result["structures"].items() if s is not None} == {C_ATTN: "filter"}
    row = next(r for r in result["storage"]["layers"] if r["name"] == C_ATTN)
    assert row["shape"] == [96, 32] and row["nnz"] == 48 * 32
    # group: 48 kept filters of 32 values, addressed by a 96-bit bitmap (relative: 204 + 3072)
    assert row["group"] == 48 * 32 * 32 + 96 and row["best"] == "group"
    assert row["detail"]["group"]["addressing"] == "bitmap"
    direct = layer_storage(model.get_submodule(C_ATTN).weight.detach().t(), "filter")
    assert row["group"] == direct["group"] and row["bound"] == pytest.approx(direct["bound"])
    # the stored (in, out) view would keep all 32 rows of 96: twice the values
    wrong = layer_storage(model.get_submodule(C_ATTN).weight.detach(), "filter")
    assert wrong["group"] == 32 * 96 * 32 + 32
    flop = next(r for r in result["flops"]["layers"] if r["name"] == C_ATTN)
    assert (flop["dense"], flop["effective"]) == (96 * 32 * 16, 48 * 32 * 16)
    refs = next(r for r in result["accelerator"]["layers"] if r["name"] == C_ATTN)
    assert (refs["structure"], refs["weight"], refs["weight_index"]) == ("filter", 12288, 384)
    # 6 of 12 output-channel groups hold weights, each reading all 32 inputs at 16 positions
    assert refs["activation"] == pytest.approx(6 * 32 * 16)
    names = [r["name"] for r in result["accelerator"]["layers"]]
    block = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert names == [f"transformer.h.{i}.{n}" for i in range(2) for n in block] + ["score"]


# ---- nn.MultiheadAttention in the memory reference model --------------------------------------


class _Attention(nn.Module):
    def __init__(self, cross: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)
        self.cross = cross

    def forward(self, x):
        kv = x.flip(0) if self.cross else x
        return self.attn(x, kv, kv)[0]


def _attention(cross: bool = False) -> _Attention:
    torch.manual_seed(0)
    m = _Attention(cross).eval()
    with torch.no_grad():
        m.attn.in_proj_weight[:12] = 0.0  # 12 of 24 projection rows (filters) pruned
    return m


def test_model_refs_counts_the_in_proj_weight_of_multihead_attention():
    m = _attention()
    geoms = profile(m, torch.randn(5, 3, 8))  # (L, N, E); the profile divides by dim 0
    assert [g.name for g in geoms] == ["attn.out_proj"]
    assert [g.name for g in geoms.extra] == ["attn.in_proj_weight"]
    res = model_refs(geoms, layer_weights(m), {"attn.in_proj_weight": "filter"})
    assert [r["name"] for r in res["layers"]] == ["attn.in_proj_weight", "attn.out_proj"]
    row = res["layers"][0]
    # 3 positions per example in one row of PEs: T = 3; 12 kept filters of 8 inputs
    assert (row["structure"], row["tiles"], row["weight"], row["weight_index"]) == (
        "filter", 3, 12 * 8 * 3, 12 * 3
    )  # fmt: skip
    # output-channel groups of 8 rows: rows 0..7 empty, 8..15 and 16..23 read all 8 inputs
    assert row["activation"] == 2 * 8 * 3
    dense = res["layers"][1]
    assert (dense["structure"], dense["weight"], dense["weight_index"]) == ("none", 192, 192)
    assert res["total"]["weight"] == 288 + 192 and res["notes"] == []


def test_model_refs_gives_blocks_of_in_proj_weight_its_structure_or_a_note():
    m = _attention(cross=True)  # separate q, k, v products: three blocks of 8 rows
    geoms = profile(m, torch.randn(5, 3, 8))
    blocks = [f"attn.in_proj_weight[{a}:{a + 8}]" for a in (0, 8, 16)]
    assert [g.name for g in geoms.extra] == blocks
    res = model_refs(geoms, layer_weights(m), {"attn.in_proj_weight": "filter"})
    rows = {r["name"]: r for r in res["layers"]}
    assert list(rows) == [*blocks, "attn.out_proj"]
    assert [rows[b]["weight"] for b in blocks] == [0, 4 * 8 * 3, 8 * 8 * 3]
    assert [rows[b]["weight_index"] for b in blocks] == [0, 4 * 3, 8 * 3]
    assert {rows[b]["structure"] for b in blocks} == {"filter"}
    # block:12x4 tiles the (24, 8) weight but not an (8, 8) block: counted as fine, with a note
    res = model_refs(geoms, layer_weights(m), {"attn.in_proj_weight": "block:12x4"})
    assert [r["structure"] for r in res["layers"]] == ["none"] * 4
    why = "block:12x4 needs K divisible by 12 and C*R*S divisible by 4, got (8, 8)"
    assert res["notes"] == [
        f"{b}: counted as fine; block:12x4 of attn.in_proj_weight does not fit it: {why}"
        for b in blocks
    ]


# ---- --attacks on token data ---------------------------------------------------------------------


@needs_transformers
def test_analyze_refuses_attacks_on_token_data_before_any_work(tmp_path, capsys, monkeypatch):
    recipe, weights, _ = _write_gpt2_run_inputs(tmp_path)
    calls = []
    for name in ("evaluate", "profile", "model_storage"):
        monkeypatch.setattr(analyze_module, name, lambda *a, _n=name, **k: calls.append(_n))
    capsys.readouterr()
    args = ["analyze", "--weights", str(weights), "--recipe", str(recipe), "--attacks", "fgsm",
            "--out", str(tmp_path / "a.json"), "--no-progress"]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert calls == [] and not (tmp_path / "a.json").exists()
    assert len(err.splitlines()) == 1
    assert (
        "--attacks: the attacks move pixels, and dataset 'synthetic-tokens' holds token ids; "
        "analyze a text model without --attacks"
    ) in err


def test_sensitivity_prunes_conv1d_output_units_on_the_out_in_view():
    from sparsegrain.analysis.sensitivity import layer_sensitivity

    tr = import_transformers()
    torch.manual_seed(0)
    cfg = tr.GPT2Config(
        n_embd=32, n_layer=1, n_head=4, vocab_size=100, n_positions=16, num_labels=3,
        pad_token_id=0,
    )  # fmt: skip
    model = tr.GPT2ForSequenceClassification(cfg).eval()
    ids = torch.randint(1, 100, (4, 8), generator=torch.Generator().manual_seed(0))
    loader = [(ids, torch.tensor([0, 1, 2, 0]))]
    fc = model.transformer.h[0].mlp.c_fc  # weight (32, 128): (in, out)
    zero_units = []

    def record(module, inputs, output):
        zero_units.append(int((module.weight == 0).all(dim=0).sum()))

    handle = fc.register_forward_hook(record)
    try:
        sens = layer_sensitivity(
            model, loader, ["transformer.h.0.mlp.c_fc"], structure="filter", sparsities=[0.5]
        )
    finally:
        handle.remove()
    assert sens.achieved["transformer.h.0.mlp.c_fc"] == {0.5: 0.5}
    assert zero_units == [0, 64]  # baseline, then 64 of 128 output units (stored columns)
    assert bool((fc.weight != 0).all())  # restored
