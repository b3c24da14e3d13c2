"""Transformer layers as candidates: Hugging Face Conv1D (stored (in, out)), tied weights (GPT-2's
lm_head is its token embedding), the classifier left dense by default on torchvision, timm and
Hugging Face models, and the ``neuron`` structure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsegrain
from sparsegrain.core.errors import ConfigError
from sparsegrain.models import external
from sparsegrain.sparsity.candidates import candidate_tensors
from sparsegrain.sparsity.classifier import classifier_layers, default_exclude
from sparsegrain.structures import Transposed, parse_structure, verify


def _import(name: str):
    try:
        return getattr(external, f"import_{name}")()
    except ConfigError:
        pytest.skip(f"{name} is not installed")


def prune_now(model, **cfg):
    base = {"method": "campfire", "start": 0, "end": 0, "frequency": 1}
    sp = sparsegrain.sparsify_(model, {**base, **cfg}, steps_per_epoch=1)
    sp.step()  # epoch 1 >= end: final masks, frozen
    return sp


def tiny_gpt2():
    tr = _import("transformers")
    torch.manual_seed(0)
    cfg = tr.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return tr.GPT2LMHeadModel(cfg).eval()


def tiny_bert():
    tr = _import("transformers")
    torch.manual_seed(0)
    cfg = tr.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    return tr.BertForSequenceClassification(cfg).eval()


# -- Hugging Face Conv1D --------------------------------------------------------------------------


def test_conv1d_is_a_linear_candidate_with_out_units_as_filters():
    model = tiny_gpt2()
    names = {n: t for n, _, t in candidate_tensors(model, ("linear",))}
    assert "transformer.h.0.attn.c_attn" in names and "transformer.h.1.mlp.c_proj" in names
    assert names["lm_head"] == "weight" and len(names) == 9  # 4 Conv1D per block, lm_head
    sp = prune_now(model, structure="filter", target=0.5)
    layer = next(l for l in sp.pruned if l.name == "transformer.h.0.mlp.c_fc")
    assert layer.transposed and isinstance(layer.structure, Transposed)
    assert layer.structure.spec == "filter"
    mask = sp.masks()["transformer.h.0.mlp.c_fc"]
    assert mask.shape == (32, 128)  # stored (in, out)
    # output units are columns of the stored tensor: 64 of 128 whole columns kept
    cols = mask.all(dim=0)
    assert int(cols.sum()) == 64 and torch.equal(mask, cols.expand(32, 128))
    w = layer.weight.detach()
    assert torch.equal(w[:, ~cols], torch.zeros(32, 64))
    assert verify(mask, layer.structure, is_mask=True) == []
    assert verify(mask, parse_structure("filter"), is_mask=True) != []  # rows are not filters
    assert sp.verify() == {}


def test_conv1d_nm_runs_along_the_inputs():
    model = tiny_gpt2()
    sp = prune_now(model, structure="nm:2:4", target=0.5, include=["*.c_proj"])
    mask = sp.masks()["transformer.h.0.attn.c_proj"]  # (in 32, out 32)
    # (out, in) view: every 4 consecutive inputs of one output unit keep exactly 2
    assert torch.equal(mask.t().reshape(32, 8, 4).sum(-1), torch.full((32, 8), 2))


# -- tied weights ---------------------------------------------------------------------------------


def test_tied_lm_head_is_masked_with_the_embedding_and_finalize_keeps_outputs():
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    x = torch.randint(0, 100, (2, 8))
    sp = prune_now(model, structure="fine", target=0.5, exclude=[])
    lm = next(l for l in sp.layers if l.name == "lm_head")
    assert lm.structure is not None and [t[0] for t in lm.ties] == ["transformer.wte.weight"]
    assert "tied with transformer.wte.weight: one mask" in lm.note
    mask = sp.masks()["lm_head"]
    assert int((~mask).sum()) == 1600  # half of 100 x 32
    # the embedding reads the same masked tensor: zero exactly where the mask drops
    wte = model.transformer.wte.weight.detach()
    assert torch.equal(wte == 0, ~mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp.optimizer = opt
    for _ in range(2):  # training through both uses of the tensor regrows nothing
        opt.zero_grad()
        model(x, labels=x).loss.backward()
        opt.step()
    assert int((model.transformer.wte.weight.detach() != 0)[~mask].sum()) == 0
    before = model(x).logits.detach()
    sp.finalize()
    after = model(x).logits.detach()
    assert torch.equal(before, after)
    assert model.lm_head.weight is model.transformer.wte.weight  # still one Parameter
    assert int((model.lm_head.weight == 0).sum()) == 1600


def test_tied_lm_head_excluded_by_default_and_finalize_without_handle():
    model = tiny_gpt2()
    x = torch.randint(0, 100, (2, 8))
    sp = prune_now(model, structure="fine", target=0.5)
    rows = {r["name"]: r for r in sp.report()}
    assert rows["lm_head"]["structure"] == "dense"
    assert rows["lm_head"]["note"] == "excluded by default (first conv / classifier)"
    before = model(x).logits.detach()
    sparsegrain.finalize_(model)
    assert torch.equal(model(x).logits.detach(), before)


def test_two_candidates_sharing_one_parameter_get_one_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.Linear(6, 2))
    model[2].weight = model[0].weight
    sp = prune_now(model, structure="fine", target=0.5, exclude=[])
    layers = {l.name: l for l in sp.layers}
    assert layers["2"].structure is None
    assert layers["2"].note == "no structure of its own: tied to '0' (one Parameter)"
    assert [t[0] for t in layers["0"].ties] == ["2.weight"]
    assert torch.equal(model[2].weight == 0, ~sp.masks()["0"])
    x = torch.randn(3, 6)
    before = model(x).detach()
    sp.finalize()
    assert torch.equal(model(x), before) and model[2].weight is model[0].weight


# -- the classifier left dense by default ---------------------------------------------------------


def test_default_exclusion_bert_classifier_not_pooler():
    model = tiny_bert()
    assert default_exclude(model) == ["classifier"]
    ids = torch.randint(0, 100, (2, 8))
    assert classifier_layers(model, {"input_ids": ids}) == ["classifier"]
    sp = prune_now(model, structure="filter", target=0.5)
    rows = {r["name"]: r for r in sp.report()}
    assert rows["classifier"]["structure"] == "dense"
    assert rows["bert.pooler.dense"]["structure"] == "filter"


def test_default_exclusion_vit_heads():
    timm = _import("timm")
    tv = _import("torchvision")
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10
    )
    assert default_exclude(vit) == ["patch_embed.proj", "head"]
    tvit = tv.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )  # fmt: skip
    assert default_exclude(tvit) == ["conv_proj", "heads.head"]
    x = torch.randn(1, 3, 32, 32)
    assert classifier_layers(tvit, x) == ["heads.head"]
    assert classifier_layers(vit, x) == ["head"]
    assert tvit.training  # restored after the run


def test_default_exclusion_hf_vit_and_zoo_unchanged():
    tr = _import("transformers")
    cfg = tr.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=10,
    )  # fmt: skip
    model = tr.ViTForImageClassification(cfg)
    assert default_exclude(model) == ["vit.embeddings.patch_embeddings.projection", "classifier"]
    zoo = sparsegrain.models.create_model("resnet20", num_classes=10, in_channels=1)
    assert default_exclude(zoo) == ["conv1", "fc"]
    out_last = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(-1))
    # no layer output is returned as is: the last layer called
    assert classifier_layers(out_last, torch.randn(2, 4)) == ["2"]


def test_sparsify_example_inputs_pick_the_classifier():
    torch.manual_seed(0)

    class Late(nn.Module):  # the classifier is registered first, the body after it
        def __init__(self):
            super().__init__()
            self.cls = nn.Linear(8, 3)
            self.body = nn.Linear(4, 8)

        def forward(self, x):
            return self.cls(self.body(x).relu())

    base = {"method": "campfire", "start": 0, "end": 0, "frequency": 1, "target": 0.5}
    sp = sparsegrain.sparsify_(Late(), base, steps_per_epoch=1)
    assert [l.name for l in sp.pruned] == ["cls"]  # names alone: the last Linear is 'body'
    sp = sparsegrain.sparsify_(Late(), base, steps_per_epoch=1, example_inputs=torch.randn(2, 4))
    assert [l.name for l in sp.pruned] == ["body"]


# -- the neuron structure -------------------------------------------------------------------------


def test_neuron_structure_rows_and_fits():
    st = parse_structure("neuron")
    w = torch.tensor([[1.0, -1.0], [0.1, 0.1], [3.0, 0.0], [0.5, 0.5]])
    assert torch.equal(
        st.mask(w, 0.5), torch.tensor([[True] * 2, [False] * 2, [True] * 2, [False] * 2])
    )
    assert st.whole_filters and st.index_group == st and not st.element_granular
    assert st.fits((8, 4, 3, 3)) == (
        "neuron needs a Linear-like weight (K, C) or a 1x1 conv, got kernel 3x3"
    )
    assert st.fits((1, 4)) == "neuron needs K > 1 (more than one hidden unit), got K=1"
    assert st.fits((8, 4, 1, 1)) is None


def test_neuron_on_mlp_first_layers_of_bert_and_gpt2():
    model = tiny_bert()
    sp = prune_now(model, structure="neuron", target=0.25, include=["*.intermediate.dense"])
    assert [l.name for l in sp.pruned] == [
        "bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.1.intermediate.dense",
    ]  # fmt: skip
    for mask in sp.masks().values():
        rows = mask.all(dim=1)
        assert int(rows.sum()) == 48 and torch.equal(mask, rows[:, None].expand(64, 32))
    gpt = tiny_gpt2()
    sp = prune_now(gpt, structure="neuron", target=0.25, include=["*.mlp.c_fc"])
    mask = sp.masks()["transformer.h.1.mlp.c_fc"]  # (in 32, out 128): units are columns
    cols = mask.all(dim=0)
    assert int(cols.sum()) == 96 and torch.equal(mask, cols.expand(32, 128))
    assert sp.verify() == {}
