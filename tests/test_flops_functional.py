"""MACs of functional calls (attention, ``F.linear`` / ``F.conv2d`` with a module's own
parameters, matmuls of activations, Hugging Face ``Conv1D``), counted by hand on tiny models."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from sparsegrain.analysis.flops import (
    format_flops,
    layer_weights,
    model_flops,
    profile,
)
from sparsegrain.models.external import import_timm, import_torchvision, import_transformers

KEYS = ("dense", "effective", "dense_valid", "effective_valid")


def need(package: str):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    return {
        "transformers": import_transformers,
        "timm": import_timm,
        "torchvision": import_torchvision,
    }[package]()


def result(model, example):
    return model_flops(profile(model, example), layer_weights(model))


def rows(res) -> dict[str, dict]:
    return {r["name"]: r for r in res["layers"]}


def ops(res) -> dict[tuple[str, str], int]:
    return {(r["name"], r["op"]): r["dense"] for r in res["functional"]}


class Mask(nn.Module):
    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w):
        return w * self.mask


class SelfAttention(nn.Module):
    def __init__(self, batch_first: bool = True):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)

    def forward(self, x, kv=None):
        kv = x if kv is None else kv
        return self.attn(x, kv, kv)[0]


# -- nn.MultiheadAttention ------------------------------------------------------------------------


def test_mha_in_proj_attention_and_out_proj_by_hand():
    model = SelfAttention()
    geoms = profile(model, torch.randn(2, 5, 16))  # batch 2, seq 5
    assert [g.name for g in geoms] == ["attn.out_proj"]  # the Linear, used functionally
    (inp,) = geoms.extra
    assert (inp.name, inp.weight_shape, inp.in_shape, inp.out_shape) == (
        "attn.in_proj_weight", (48, 16), (16, 1, 5), (48, 1, 5)
    )  # fmt: skip
    res = model_flops(geoms, layer_weights(model))
    assert [r["name"] for r in res["layers"]] == ["attn.in_proj_weight", "attn.out_proj"]
    assert rows(res)["attn.in_proj_weight"]["dense"] == 3 * 16 * 16 * 5  # q, k, v: 3840
    assert rows(res)["attn.out_proj"]["dense"] == 16 * 16 * 5  # 1280
    # per head (head dim 4): q k^T is (5, 4) x (4, 5), attn @ v is (5, 5) x (5, 4): 100 each
    assert ops(res) == {("attn", "attention"): 4 * (100 + 100)}
    assert res["total"]["dense"] == 3840 + 1280 + 800
    assert "attn [attention]" in format_flops(res)


def test_mha_sequence_first_divides_by_dim_0_like_linear_layers():
    # (L, N, E) = (5, 2, 16): "per example" is per item of dim 0, as for an nn.Linear on it
    res = result(SelfAttention(batch_first=False), torch.randn(5, 2, 16))
    assert res["total"]["dense"] * 5 == 2 * (3840 + 1280 + 800)
    assert rows(res)["attn.out_proj"]["dense"] == 16 * 16 * 2


def test_mha_masked_in_proj_halves_its_sparse_macs():
    model = SelfAttention()
    mask = torch.ones(48, 16)
    mask[:, :8] = 0.0  # half of every row
    parametrize.register_parametrization(model.attn, "in_proj_weight", Mask(mask))
    x = torch.randn(2, 5, 16)
    geoms = profile(model, x)
    for weights in (layer_weights(model), {"attn.out_proj": model.attn.out_proj.weight}):
        # the second dict lacks in_proj_weight: the tensor the profile saw is used
        r = rows(model_flops(geoms, weights))["attn.in_proj_weight"]
        assert {k: r[k] for k in KEYS} == {
            "dense": 3840, "effective": 1920, "dense_valid": 3840, "effective_valid": 1920
        }  # fmt: skip
        assert r["ratio"] == 2.0
    assert layer_weights(model)["attn.in_proj_weight"].count_nonzero() == 48 * 8


def test_mha_cross_attention_counts_row_blocks_of_in_proj():
    model = SelfAttention()
    with torch.no_grad():
        model.attn.in_proj_weight[16:24] = 0.0  # half of the key projection
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 5, 16)  # L = 3, S = 5
    res = result(model, (q, kv))
    r = rows(res)
    assert r["attn.in_proj_weight[0:16]"]["dense"] == 16 * 16 * 3
    assert r["attn.in_proj_weight[16:32]"]["dense"] == 16 * 16 * 5
    assert r["attn.in_proj_weight[16:32]"]["effective"] == 8 * 16 * 5
    assert r["attn.in_proj_weight[32:48]"]["effective"] == 16 * 16 * 5
    assert ops(res) == {("attn", "attention"): 2 * 3 * 5 * 16}
    assert res["total"]["dense"] == 768 + 1280 + 1280 + 480 + 768


def test_torchvision_vit_counts_its_multihead_attention():
    tv = need("torchvision")
    model = tv.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=4, hidden_dim=32, mlp_dim=64,
        num_classes=3,
    )  # fmt: skip
    res = result(model, torch.randn(2, 3, 32, 32))
    t = 4 + 1  # 2 x 2 patches and the class token
    patches = 32 * 3 * 16 * 16 * 4
    block = 3 * 32 * 32 * t + 2 * t * t * 32 + 32 * 32 * t + 2 * 32 * 64 * t
    assert res["total"]["dense"] == patches + block + 32 * 3  # 140960
    assert rows(res)["encoder.layers.encoder_layer_0.self_attention.in_proj_weight"]["dense"] == (
        15360
    )


# -- functional calls with a module's own parameters ----------------------------------------------


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.randn(3, 2, 3, 3))
        self.w = nn.Parameter(torch.randn(6, 4))
        self.b = nn.Parameter(torch.zeros(6))
        self.proj = nn.Linear(6, 2)  # its weight is used, the module is never called
        self.p = nn.Parameter(torch.randn(6, 3))

    def forward(self, img, seq):
        y = F.linear(seq, self.w, self.b)  # (N, 7, 6)
        return F.conv2d(img, self.k, stride=2, padding=1), F.linear(y, self.proj.weight), y @ self.p


def test_functional_linear_conv_and_param_matmul_by_hand():
    model = Functional()
    with torch.no_grad():
        model.w[0] = 0.0
    img, seq = torch.ones(2, 2, 5, 5), torch.ones(2, 7, 4)
    geoms = profile(model, (img, seq))
    assert [g.name for g in geoms] == ["proj"]
    assert [g.name for g in geoms.extra] == ["w", "k", "p"]
    conv = geoms.extra[1]
    assert (conv.kind, conv.in_shape, conv.out_shape, conv.stride, conv.padding) == (
        "conv2d", (2, 5, 5), (3, 3, 3), (2, 2), (1, 1)
    )  # fmt: skip
    res = model_flops(geoms, layer_weights(model))
    assert [r["name"] for r in res["layers"]] == ["w", "k", "proj", "p"]  # call order
    r = rows(res)
    assert (r["w"]["dense"], r["w"]["effective"]) == (6 * 4 * 7, 5 * 4 * 7)
    # Ho = Wo = 3; each kernel row meets rows [2, 3, 2] of the output (padding skipped)
    assert (r["k"]["dense"], r["k"]["dense_valid"]) == (3 * 2 * 9 * 9, 3 * 2 * 7 * 7)
    assert r["proj"]["dense"] == 2 * 6 * 7
    assert r["p"]["dense"] == 6 * 3 * 7
    assert res["functional"] == []
    assert res["total"]["dense"] == 168 + 486 + 84 + 126


def test_functional_conv1d_and_a_buffer_weight():
    class Fn1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.k = nn.Parameter(torch.ones(3, 2, 3))
            self.register_buffer("fixed", torch.ones(5, 6))  # not a parameter: no weight row

        def forward(self, x):
            return F.linear(F.conv1d(x, self.k, padding=1).transpose(1, 2), self.fixed[:, :3])

    geoms = profile(Fn1d(), torch.ones(2, 2, 6))
    (g,) = geoms.extra
    assert (g.name, g.kind, g.in_shape, g.out_shape, g.padding) == (
        "k", "conv1d", (2, 1, 6), (3, 1, 6), (0, 1)
    )  # fmt: skip
    res = model_flops(geoms, layer_weights(Fn1d()))
    # taps s = 0 and s = 2 miss one output each: (5 + 6 + 5) per kernel row, 6 kernel rows
    assert (rows(res)["k"]["dense"], rows(res)["k"]["effective_valid"]) == (108, 6 * 16)
    assert ops(res) == {("", "linear"): 6 * 3 * 5}  # 6 positions, (5, 3) weight


def test_masked_linear_is_counted_once_with_its_mask():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    mask = torch.zeros(6, 4)
    mask[:3] = 1.0
    parametrize.register_parametrization(model[0], "weight", Mask(mask))
    geoms = profile(model, torch.ones(2, 4))
    assert [g.name for g in geoms] == ["0", "2"] and geoms.extra == [] and geoms.functional == []
    res = model_flops(geoms, layer_weights(model))
    assert [(r["dense"], r["effective"]) for r in res["layers"]] == [(24, 12), (12, 12)]


# -- products of activations ----------------------------------------------------------------------


class Products(nn.Module):
    def forward(self, x):  # x: (N, 5, 16)
        s = torch.matmul(x, x.transpose(-1, -2))  # (5, 16) x (16, 5): 400 per example
        o = s @ x  # (5, 5) x (5, 16): 400
        b = torch.bmm(x, x.transpose(1, 2))  # 400
        c = torch.baddbmm(torch.zeros(1, 5, 5), x, x.transpose(1, 2))  # 400
        e = torch.einsum("bij,bkj->bik", x, x)  # 400
        return o, b + c + e, F.scaled_dot_product_attention(x, x, x)  # 400 + 400


def test_activation_products_by_hand():
    res = result(Products(), torch.randn(2, 5, 16))
    assert res["layers"] == []
    assert ops(res) == {
        ("", "matmul"): 800, ("", "bmm"): 400, ("", "baddbmm"): 400, ("", "einsum"): 400,
        ("", "sdpa"): 800,
    }  # fmt: skip
    assert res["total"]["dense"] == res["total"]["effective"] == 2800
    assert "(model) [matmul]" in format_flops(res)


def test_ops_of_a_module_called_twice_count_its_first_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.prod = Products()

        def forward(self, x):
            return self.prod(x)[0] + self.prod(x)[0]

    res = result(Twice(), torch.randn(2, 5, 16))
    assert {r["op"]: (r["dense"], r["calls"]) for r in res["functional"]}["matmul"] == (800, 2)


def test_uncounted_calls_are_noted():
    model = nn.Sequential(nn.ConvTranspose2d(2, 2, 3))
    res = result(model, torch.randn(1, 2, 4, 4))
    assert res["notes"] == ["0: conv_transpose2d is not counted"]
    assert "not counted: 0: conv_transpose2d is not counted" in format_flops(res)


# -- Hugging Face, timm ---------------------------------------------------------------------------


def tiny_bert(tr, heads: int = 4, **kw):
    cfg = tr.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=heads, intermediate_size=64,
        vocab_size=50, max_position_embeddings=16, **kw,
    )  # fmt: skip
    return tr.BertModel(cfg)


def bert_macs(h: int, t: int, heads_dims: list[int], ffn: list[int]) -> int:
    """Per layer: q, k, v to ``a`` = heads x head dim, out-projection back, two attention
    products over ``a``, the two MLP Linears; then the pooler on the first token."""
    per_layer = [4 * h * a * t + 2 * t * t * a + 2 * h * f * t for a, f in zip(heads_dims, ffn)]
    return sum(per_layer) + h * h


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bert_total_by_formula(attn):
    tr = need("transformers")
    model = tiny_bert(tr, attn_implementation=attn)
    ids = torch.randint(0, 50, (2, 8))
    assert isinstance(model(ids), tr.utils.ModelOutput)
    res = result(model, ids)
    assert res["total"]["dense"] == bert_macs(32, 8, [32, 32], [64, 64]) == 140288
    assert len(res["layers"]) == 2 * 6 + 1
    assert sum(r["dense"] for r in res["functional"]) == 2 * 2 * 8 * 8 * 32


def test_bert_total_goes_down_with_fewer_heads_and_neurons():
    tr = need("transformers")
    model = tiny_bert(tr)
    layer = model.encoder.layer[0]
    att = layer.attention.self
    # a rebuilt layer 0: 2 heads of 8 kept, 40 of 64 MLP neurons kept
    att.query, att.key, att.value = nn.Linear(32, 16), nn.Linear(32, 16), nn.Linear(32, 16)
    att.num_attention_heads, att.all_head_size = 2, 16
    layer.attention.output.dense = nn.Linear(16, 32)
    layer.intermediate.dense, layer.output.dense = nn.Linear(32, 40), nn.Linear(40, 32)
    res = result(model, torch.randint(0, 50, (2, 8)))
    assert res["total"]["dense"] == bert_macs(32, 8, [16, 32], [40, 64]) == 109568


def test_gpt2_conv1d_by_formula_and_sparse():
    tr = need("transformers")
    cfg = tr.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, n_positions=16, vocab_size=50, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    model = tr.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.weight[:, :48] = 0.0  # Conv1D weight is (in, out)
    geoms = profile(model, torch.randint(0, 50, (2, 8)))
    c_attn = next(g for g in [*geoms, *geoms.extra] if g.name == "transformer.h.0.attn.c_attn")
    assert (c_attn.weight_shape, c_attn.in_shape, c_attn.out_shape) == (
        (32, 96), (32, 1, 8), (96, 1, 8)
    )  # fmt: skip
    res = model_flops(geoms, layer_weights(model))
    block = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    names = [f"transformer.h.{i}.{n}" for i in range(2) for n in block]
    assert [r["name"] for r in res["layers"]] == [*names, "lm_head"]  # tied to wte: once
    h, t = 32, 8
    per_layer = 3 * h * h * t + h * h * t + 2 * 4 * h * h * t + 2 * t * t * h  # 102400
    assert res["total"]["dense"] == 2 * per_layer + 50 * h * t == 217600
    r = rows(res)["transformer.h.0.attn.c_attn"]
    assert (r["dense"], r["effective"]) == (3 * h * h * t, 3 * h * h * t // 2)
    assert res["total"]["effective"] == 217600 - 3 * h * h * t // 2


def test_model_output_and_tuple_outputs():
    tr = need("transformers")
    outputs = tr.modeling_outputs

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            y = self.lin(x)
            return outputs.BaseModelOutput(last_hidden_state=y, hidden_states=(x, y))

    class Pair(Wrapped):
        def forward(self, x):
            return self.lin(x), torch.matmul(x, x.transpose(-1, -2))

    x = torch.randn(2, 6, 4)
    assert isinstance(Wrapped()(x), tr.utils.ModelOutput)
    assert result(Wrapped(), x)["total"]["dense"] == 3 * 4 * 6
    assert result(Pair(), x)["total"]["dense"] == 3 * 4 * 6 + 6 * 6 * 4


def test_timm_vit_counts_fused_attention():
    timm = need("timm")
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, embed_dim=32, depth=1,
        num_heads=4, num_classes=3,
    )  # fmt: skip
    res = result(model, torch.randn(2, 3, 32, 32))
    t = 4 + 1
    block = 3 * 32 * 32 * t + 2 * t * t * 32 + 32 * 32 * t + 2 * 32 * 128 * t
    assert res["total"]["dense"] == 32 * 3 * 16 * 16 * 4 + block + 32 * 3  # 161440
