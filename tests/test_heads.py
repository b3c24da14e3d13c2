"""The ``head`` structure: attention modules found (nn.MultiheadAttention, timm, Hugging Face BERT /
ViT, GPT-2), one head mask per module, masks through finalize and resume, and pruned heads
removed (``compact_heads_`` / ``apply_heads_``) with the outputs of the masked model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sparsegrain
from sparsegrain.core.errors import ConfigError
from sparsegrain.deploy.compact.heads import HeadsAttention, apply_heads_, compact_heads_
from sparsegrain.models import external
from sparsegrain.sparsity.attention import find_attention
from sparsegrain.structures import Head, parse_structure, verify

T, F = True, False


def _import(name: str):
    try:
        return getattr(external, f"import_{name}")()
    except ConfigError:
        pytest.skip(f"{name} is not installed")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_heads(model, target=0.5, **cfg):
    base = {"method": "campfire", "start": 0, "end": 0, "frequency": 1, "structure": "head"}
    sp = sparsegrain.sparsify_(
        model, {**base, "target": target, "fallback": "dense", **cfg}, steps_per_epoch=1
    )
    sp.step()
    return sp


class MHANet(nn.Module):
    def __init__(self, batch_first: bool, e: int = 16, h: int = 4):
        super().__init__()
        self.attn = nn.MultiheadAttention(e, h, batch_first=batch_first)
        self.fc = nn.Linear(e, 3)

    def forward(self, x, key_padding_mask=None):
        y, _ = self.attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)
        return self.fc(y)


def _scale_heads(w: torch.Tensor, d: int, scales, blocks: int = 1) -> None:
    """Multiply head h's rows of each of ``blocks`` row blocks by scales[h] (in place)."""
    h = len(scales)
    with torch.no_grad():
        view = w.view(blocks, h, d, -1)
        for i, s in enumerate(scales):
            view[:, i] *= s


# -- the structure ---------------------------------------------------------------------------------


def test_head_structure_views_masks_and_specs():
    qkv = parse_structure("head:2:qkv")
    w = torch.arange(12.0 * 2).reshape(12, 2)  # 3 blocks x 2 heads x d=2 rows
    # head 0 owns rows 0-1 (q), 4-5 (k), 8-9 (v)
    assert torch.equal(
        qkv.group_view(w.reshape(12, 2, 1, 1))[0, 0], w[[0, 1, 4, 5, 8, 9]].flatten()
    )
    m = qkv.mask(torch.ones(12, 2) * torch.tensor([1.0] * 6 + [3.0] * 6)[:, None], 0.5)
    assert torch.equal(m[:, 0], torch.tensor([F, F, T, T, F, F, T, T, F, F, T, T]))
    cols = parse_structure("head:2:cols")
    m = cols.mask(torch.tensor([[1.0, 1.0, 5.0, 5.0]]).repeat(3, 1), 0.5)
    assert torch.equal(m, torch.tensor([[F, F, T, T]] * 3))
    assert verify(m, cols, is_mask=True) == []
    bad = torch.tensor([[T, F, T, T]] * 3)
    assert verify(bad, cols, is_mask=True)[0].startswith("head:2:cols: head 0 is partly kept")
    assert parse_structure("head") == Head() and Head().spec == "head"
    assert parse_structure("head:4").spec == "head:4" and parse_structure("head:4:qkv") == Head(
        4, "qkv"
    )
    assert Head().fits((8, 8)).startswith("head applies only to the q, k, v and output")
    assert Head(4, "qkv").fits((8, 8)) == "head:4:qkv needs K divisible by 12, got K=8"
    with pytest.raises(ConfigError, match="expected head, head:H or head:H:PART"):
        parse_structure("head:4:up")


def test_head_not_fitting_other_layers_is_refused_or_left_dense():
    model = MHANet(True)
    base = {"method": "campfire", "start": 0, "end": 0, "frequency": 1, "structure": "head"}
    with pytest.raises(ConfigError, match="layer 'fc' \\[3, 16\\]: head applies only to"):
        sparsegrain.sparsify_(model, {**base, "target": 0.5, "exclude": []}, steps_per_epoch=1)
    with pytest.raises(ConfigError, match="attention module 'attn' has 4 heads"):
        sparsegrain.sparsify_(
            MHANet(True), {**base, "structure": "head:2", "target": 0.5, "fallback": "dense"},
            steps_per_epoch=1,
        )  # fmt: skip


# -- finding attention modules --------------------------------------------------------------------


def test_find_attention_mha_and_index_sets():
    (block,) = find_attention(MHANet(False))
    assert (block.name, block.kind, block.num_heads, block.head_dim) == ("attn", "mha", 4, 4)
    assert [(p.layer, p.tensor, p.bias, p.role) for p in block.parts] == [
        ("attn.in_proj_weight", "in_proj_weight", "in_proj_bias", "qkv"),
        ("attn.out_proj", "weight", "bias", "out"),
    ]
    assert block.index("v", 1)[1] == [36, 37, 38, 39]  # 2E + h*d
    assert block.index("out", 3)[1] == [12, 13, 14, 15]
    assert block.heads_index(block.parts[0])[0] == (0, 1, 2, 3, 16, 17, 18, 19, 32, 33, 34, 35)


def test_find_attention_timm_bert_vit_gpt2():
    timm = _import("timm")
    tr = _import("transformers")
    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10
    )
    blocks = find_attention(vit)
    assert [(b.name, b.kind, b.num_heads, b.head_dim) for b in blocks] == [
        ("blocks.0.attn", "timm", 3, 64), ("blocks.1.attn", "timm", 3, 64),
    ]  # fmt: skip
    assert [p.layer for p in blocks[0].parts] == ["blocks.0.attn.qkv", "blocks.0.attn.proj"]
    bert = _bert(tr)
    b = find_attention(bert)[1]
    assert (b.name, b.kind, b.num_heads, b.head_dim) == (
        "bert.encoder.layer.1.attention.self",
        "hf",
        4,
        8,
    )
    assert [p.layer for p in b.parts] == [
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.key",
        "bert.encoder.layer.1.attention.self.value", "bert.encoder.layer.1.attention.output.dense",
    ]  # fmt: skip
    assert b.index("v", 2) == (b.parts[2], [16, 17, 18, 19, 20, 21, 22, 23])
    hv = find_attention(_hf_vit(tr))[0]
    assert [p.role for p in hv.parts] == ["q", "k", "v", "out"]
    assert hv.parts[3].layer == "vit.layers.0.attention.o_proj"
    g = find_attention(_gpt2(tr))[0]
    assert (g.kind, g.num_heads, [p.transposed for p in g.parts]) == ("gpt2", 4, [True, True])


def _bert(tr):
    torch.manual_seed(0)
    cfg = tr.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    return tr.BertForSequenceClassification(cfg).eval()


def _hf_vit(tr):
    torch.manual_seed(0)
    cfg = tr.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=10,
    )  # fmt: skip
    return tr.ViTForImageClassification(cfg).eval()


def _gpt2(tr):
    torch.manual_seed(0)
    cfg = tr.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return tr.GPT2LMHeadModel(cfg).eval()


# -- one head mask per module ----------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_head_masks_exact_and_compaction(batch_first):
    torch.manual_seed(0)
    model = MHANet(batch_first).eval()
    _scale_heads(model.attn.in_proj_weight, 4, [1.0, 5.0, 0.1, 3.0], blocks=3)
    sp = prune_heads(model)
    assert torch.equal(sp.head_masks()["attn"], torch.tensor([F, T, F, T]))
    masks = sp.masks()
    assert set(masks) == {"attn.in_proj_weight", "attn.out_proj"}
    rows = masks["attn.in_proj_weight"].all(dim=1)
    dropped = [i for b in (0, 16, 32) for h in (0, 2) for i in range(b + 4 * h, b + 4 * h + 4)]
    assert torch.equal(torch.nonzero(~rows).flatten(), torch.tensor(sorted(dropped)))
    assert torch.equal(
        masks["attn.out_proj"].all(dim=0), torch.tensor([F] * 4 + [T] * 4 + [F] * 4 + [T] * 4)
    )
    assert sp.verify() == {}
    rows_report = {r["name"]: r for r in sp.report()}
    assert rows_report["attn.in_proj_weight"]["structure"] == "head:4:qkv"
    assert rows_report["attn.out_proj"]["structure"] == "head:4:cols"
    assert rows_report["attn.out_proj"]["note"] == "heads of 'attn'"
    assert rows_report["fc"]["structure"] == "dense"
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    pad = torch.tensor([[F, F, F, T, T], [F, F, F, F, F]])
    masked = model(x, pad).detach()
    sparsegrain.finalize_(model)
    assert torch.equal(model(x, pad).detach(), masked)
    assert _params(model) == 1088 + 51
    kept, notes = compact_heads_(model)
    assert kept == {"attn": [1, 3]} and notes == {}
    assert isinstance(model.attn, HeadsAttention) and model.attn.batch_first is batch_first
    assert _params(model) == 552 + 51  # in_proj 3*8*16 + 24, out_proj 16*8 + 16
    assert (model(x, pad) - masked).abs().max().item() <= 1e-5
    out, weights = model.attn(x, x, x)
    assert weights.shape == (2, 5, 5) and out.shape == x.shape


def test_mha_fold_v_bias_and_notes_and_keep_one():
    torch.manual_seed(0)
    model = MHANet(True).eval()
    w, b = model.attn.in_proj_weight, model.attn.in_proj_bias
    with torch.no_grad():
        b.normal_()
        w[32:36] = 0  # head 0: v rows zero, v bias non-zero: constant folded into out bias
        w[4:8] = 0
        w[20:24] = 0  # head 1: zero q and k rows, non-zero v: kept, noted
        model.attn.out_proj.weight[:, 8:12] = 0  # head 2: adds nothing
    x = torch.randn(2, 5, 16)
    ref = model(x).detach()
    kept, notes = compact_heads_(model)
    assert kept == {"attn": [1, 3]}
    assert notes == {"attn": ["heads [1] kept: zero q/k rows but non-zero v (uniform attention)"]}
    assert (model(x) - ref).abs().max().item() <= 1e-5
    # every head removable: the first one stays
    model = MHANet(False).eval()
    with torch.no_grad():
        model.attn.out_proj.weight.zero_()
    x = torch.randn(5, 2, 16)
    ref = model(x).detach()
    kept, notes = compact_heads_(model)
    assert kept == {"attn": [0]}
    assert notes == {"attn": ["every head is removable: head 0 kept (a module needs one)"]}
    assert (model(x) - ref).abs().max().item() <= 1e-6


def test_apply_heads_rebuilds_a_fresh_model_for_loading():
    torch.manual_seed(0)
    model = MHANet(True).eval()
    prune_heads(model, target=0.75)
    sparsegrain.finalize_(model)
    kept, _ = compact_heads_(model)
    assert len(kept["attn"]) == 1
    fresh = MHANet(True).eval()
    apply_heads_(fresh, kept)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 5, 16)
    assert torch.equal(fresh(x), model(x))
    with pytest.raises(ConfigError, match="heads: 'att' is no attention module of the model"):
        apply_heads_(MHANet(True), {"att": [0]})
    with pytest.raises(ConfigError, match="expected distinct indices in \\[0, 4\\)"):
        apply_heads_(MHANet(True), {"attn": [0, 0]})


def test_gradual_heads_stay_pruned_and_resume():
    torch.manual_seed(0)
    model = MHANet(True)
    cfg = {"method": "campfire", "structure": "head", "target": 0.75, "start": 0, "end": 2,
           "frequency": 1, "fallback": "dense"}  # fmt: skip
    sp = sparsegrain.sparsify_(model, cfg, steps_per_epoch=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sp.optimizer = opt
    seen = []
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(2, 5, 16)).pow(2).mean().backward()
        opt.step()
        sp.step()
        seen.append(sp.head_masks()["attn"].clone())
    counts = [int(m.sum()) for m in seen]
    assert counts == sorted(counts, reverse=True) and counts[-1] == 1
    for a, b in zip(seen, seen[1:]):
        assert not bool((b & ~a).any())  # a pruned head never comes back
    state = sp.state_dict()
    other = MHANet(True)
    sp2 = sparsegrain.sparsify_(other, cfg, steps_per_epoch=2)
    other.load_state_dict(model.state_dict())  # parametrized keys on both sides
    sp2.load_state_dict(state)
    assert torch.equal(sp2.head_masks()["attn"], seen[-1])
    assert all(torch.equal(sp2.masks()[k], v) for k, v in sp.masks().items())
    assert torch.equal(other.attn.in_proj_weight, model.attn.in_proj_weight)
    sp2.finalize()
    assert int(other.attn.out_proj.weight.any(dim=0).sum()) == 4  # one head of 4 columns


# -- timm, Hugging Face BERT and ViT, GPT-2 --------------------------------------------------------


def _check_family(model, x, out, blocks: int, heads: int, removed_params: int):
    sp = prune_heads(model)
    hm = sp.head_masks()
    assert len(hm) == blocks and all(int(m.sum()) == heads // 2 for m in hm.values())
    for layer in sp.pruned:
        mask = sp.masks()[layer.name]
        assert verify(mask, layer.structure, is_mask=True) == []
        keep = hm[layer.block]
        view = layer.structure.group_view(mask.reshape(*mask.shape, 1, 1))[0]
        assert torch.equal(view.all(dim=1), keep) and torch.equal(view.any(dim=1), keep)
    masked = out(model).detach()
    sp.finalize()
    n = _params(model)
    kept, notes = compact_heads_(model)
    assert kept == {b: torch.nonzero(m).flatten().tolist() for b, m in hm.items()}
    assert notes == {}
    assert n - _params(model) == removed_params
    assert (out(model).detach() - masked).abs().max().item() <= 1e-5


def test_timm_vit_heads():
    timm = _import("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    # keep_count(3, 0.5) = 3 - round(1.5) = 1 head kept per block, 2 removed
    removed = (
        2 * 2 * (3 * 64 * 192 + 3 * 64 + 192 * 64)
    )  # 2 blocks, 2 heads: qkv rows + bias, proj cols
    sp = prune_heads(model)
    assert all(int(m.sum()) == 1 for m in sp.head_masks().values())
    masked = model(x).detach()
    sp.finalize()
    n = _params(model)
    kept, notes = compact_heads_(model)
    assert all(len(v) == 1 for v in kept.values()) and notes == {}
    assert n - _params(model) == removed and model.blocks[0].attn.num_heads == 1
    assert (model(x) - masked).abs().max().item() <= 1e-5


def test_hf_bert_heads():
    tr = _import("transformers")
    model = _bert(tr)
    x = torch.randint(0, 100, (2, 8))
    # 2 blocks x 2 heads x (3 x (8 x 32 + 8) q/k/v rows + 32 x 8 output columns)
    _check_family(model, x, lambda m: m(x).logits, 2, 4, 2 * 2 * (3 * 264 + 256))
    assert model.bert.encoder.layer[0].attention.self.num_attention_heads == 2


def test_hf_vit_heads():
    tr = _import("transformers")
    model = _hf_vit(tr)
    x = torch.randn(2, 3, 32, 32)
    _check_family(model, x, lambda m: m(x).logits, 2, 4, 2 * 2 * (3 * 264 + 256))


def test_gpt2_heads():
    tr = _import("transformers")
    model = _gpt2(tr)
    x = torch.randint(0, 100, (2, 8))
    _check_family(model, x, lambda m: m(x).logits, 2, 4, 2 * 2 * (3 * 264 + 256))
    assert model.transformer.h[1].attn.split_size == 16


def test_torchvision_vit_heads():
    tv = _import("torchvision")
    torch.manual_seed(0)
    model = tv.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 32, 32)
    _check_family(model, x, lambda m: m(x), 2, 4, 2 * 2 * (3 * 264 + 256))
    copy.deepcopy(model)(x)  # the rebuilt model copies and runs
