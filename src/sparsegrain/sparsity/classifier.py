"""The layers that write a model's output (its classifier), and the layers left dense by default.

The first conv and the classifier hold few weights and much accuracy, so they are left dense
unless ``sparsity.exclude`` says otherwise (as in Campfire, Mao et al. and StructADMM). Finding
the classifier of any model takes a few rules (``classifier_layers``): what a run returns, what
the model declares, and the last Linear as the fallback of the zoo.
"""

from __future__ import annotations

import torch
from torch import nn

from .candidates import LAYER_TYPES, candidate_layers, is_candidate, join_name


def default_exclude(model: nn.Module, example_inputs=None) -> list[str]:
    """The first conv and the classifier (``classifier_layers``): left dense by default, as in
    Campfire, Mao et al. and StructADMM, since they hold few weights and much accuracy."""
    convs = [n for n, m in candidate_layers(model, ("conv",))]
    out = convs[:1]
    return out + [n for n in classifier_layers(model, example_inputs) if n not in out]


def classifier_layers(model: nn.Module, example_inputs=None) -> list[str]:
    """The layers that write the model's output, by the first rule that finds any:

    1. with ``example_inputs`` (a tensor, a tuple of positional inputs or a mapping of keyword
       inputs): the candidate layers whose output tensor the model returns (itself, or inside the
       tuple/list/mapping it returns, as Hugging Face's ``logits``), else the last one called;
    2. the head the model declares: Hugging Face ``get_output_embeddings()`` (a language model's
       ``lm_head``), timm ``get_classifier()``; a module holding several candidates gives its
       last one;
    3. a Hugging Face model (one with ``dummy_inputs``): rule 1's first part on its own dummy
       inputs (``BertForSequenceClassification``: ``classifier``, never ``bert.pooler.dense``);
    4. the last Linear in module order, else the last conv (every model of the zoo).

    A run (rules 1 and 3) is done in eval mode without gradients; training flags are restored.
    """
    if example_inputs is not None:
        found, called = _output_layers(model, example_inputs)
        if found or called:
            return found or called[-1:]
    declared = _declared_head(model)
    if declared:
        return declared
    dummy = _dummy_inputs(model)
    if dummy is not None:
        try:
            found, _ = _output_layers(model, dummy)
        except Exception:  # noqa: BLE001 (a model whose dummy inputs do not fit: next rule)
            found = []
        if found:
            return found
    layers = candidate_layers(model)
    linears = [n for n, m in layers if isinstance(m, nn.Linear)]
    convs = [n for n, m in layers if isinstance(m, LAYER_TYPES["conv"])]
    return linears[-1:] or convs[-1:]


def _declared_head(model: nn.Module) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    for attr in ("get_output_embeddings", "get_classifier"):
        fn = getattr(model, attr, None)
        if not callable(fn):
            continue
        try:
            head = fn()
        except Exception:  # noqa: BLE001 (HF backbones raise NotImplementedError here)
            continue
        if not isinstance(head, nn.Module) or id(head) not in names:
            continue
        if is_candidate(head):
            return [names[id(head)]]
        inside = [n for n, m in head.named_modules() if is_candidate(m)]
        if inside:
            return [join_name(names[id(head)], inside[-1])]
    return []


def _dummy_inputs(model: nn.Module):
    if not isinstance(getattr(type(model), "dummy_inputs", None), property):
        return None
    try:
        dummy = model.dummy_inputs
    except Exception:  # noqa: BLE001 (a model without dummy inputs of its own)
        return None
    return dummy if isinstance(dummy, dict) and dummy else None


@torch.no_grad()
def _output_layers(model: nn.Module, inputs) -> tuple[list[str], list[str]]:
    """``(candidate layers whose output the model returns, candidate layers in call order)`` in a
    run on ``inputs`` (eval mode, no gradients, training flags restored)."""
    outputs: dict[int, str] = {}
    called: list[str] = []
    keep: list[torch.Tensor] = []  # holds the outputs so their ids stay theirs during the run

    def hook_for(name):
        def hook(_m, _args, out):
            if isinstance(out, torch.Tensor):
                keep.append(out)
                outputs[id(out)] = name
                called.append(name)

        return hook

    flags = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook_for(n)) for n, m in candidate_layers(model)]
    try:
        model.eval()
        if isinstance(inputs, dict):
            result = model(**inputs)
        elif isinstance(inputs, tuple):
            result = model(*inputs)
        else:
            result = model(inputs)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    found = [outputs[id(t)] for t in _tensors(result) if id(t) in outputs]
    return list(dict.fromkeys(found)), called


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    return []
