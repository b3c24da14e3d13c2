"""BatchNorm channels of dropped filters, masked with them so that compaction can remove them.

Why. A filter ``k`` whose weights are all pruned outputs 0 (its bias, if it has one), and the
BatchNorm right after it turns that constant into ``gamma_k (x - mean_k) / sqrt(var_k + eps) +
beta_k``. In training ``x`` equals its batch mean, so the channel outputs ``beta_k``, and the
running mean and variance of the constant decay towards 0: after training the channel is about
``beta_k`` in eval too. Where ``beta_k > 0`` it passes the ReLU, and a non-zero constant read
through a zero-padded conv cannot be removed exactly (``compact.plan``): the filter-pruned model
is then not much smaller. Masking ``gamma_k`` and ``beta_k`` together with the filter makes the
channel's BN output exactly 0 whatever the statistics, in training and in eval, so the network
learns without it and ``compact`` removes it. The masks are the same parametrizations as the
weights' (parameters and optimizer state zeroed whenever the mask changes, so nothing regrows)
and follow the layer's mask in ``masking.set_mask``.

Which BatchNorm (any subclass of PyTorch's ``_BatchNorm``, such as timm's ``BatchNormAct2d``): read
off the graph of the model (``graph.trace``: torch.fx, else a run on an example input), never
guessed from module names or order. Layer ``L`` is paired with BatchNorm ``B`` when ``L`` is called
once, ``B`` is the only BatchNorm call that reads ``L``'s output, takes it as its one argument, is
called once, is affine, has one channel per filter of ``L``, and nothing else in the graph reads
``B``'s weight or bias. A model that cannot be traced gets no pairing and a note on its layers.

When (``sparsity.prune_bn``): ``true`` for every pruned layer, ``false`` for none, unset (the
default) for the layers whose structure's group is a whole filter (``filter``); with other
structures a filter is rarely dropped whole, and a user who wants it asks with ``true``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from ..core.fx import untraced_note
from ..graph import trace
from . import masking
from .masking import Layer, Norm

NOTE = "BN not masked: "


def wants_norm(layer: Layer, prune_bn: bool | None) -> bool:
    """Whether ``layer``'s dropped filters take their BatchNorm channels along."""
    if layer.structure is None:
        return False
    return prune_bn if prune_bn is not None else layer.structure.whole_filters


def find_norms(
    model: nn.Module, names: Sequence[str], example_inputs=None
) -> tuple[dict[str, str], dict[str, str]]:
    """For the Conv/Linear layers ``names``: ``(layer -> BatchNorm that reads its output
    directly, layer -> why a BatchNorm that reads it is not paired)``, from the model's graph
    (``graph.trace``: torch.fx, else a run on ``example_inputs``; rule in the module doc).
    Raises what tracing raises when the model cannot be traced."""
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()  # a run must not move the BatchNorm statistics
        nodes = trace(model, example_inputs).nodes
    finally:
        for m, mode in training.items():
            m.train(mode)
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in nodes if n.op == "call_module")
    attrs = [str(n.target) for n in nodes if n.op == "get_attr"]
    wanted = set(names)
    found: dict[str, str] = {}
    refused: dict[str, str] = {}
    for node in nodes:
        if node.op != "call_module" or node.target not in wanted:
            continue
        norms = [
            u
            for u in node.users
            if u.op == "call_module" and isinstance(modules.get(u.target), _BatchNorm)
        ]
        if not norms:
            continue
        reason = _refusal(node, norms, modules, calls, attrs)
        if reason:
            refused[node.target] = NOTE + reason
        else:
            found[node.target] = norms[0].target
    return found, refused


def _refusal(node, norms, modules, calls, attrs) -> str:
    """Why ``node``'s BatchNorm may not be masked with it ('' when it may)."""
    name = node.target
    if calls[name] != 1:
        return f"'{name}' is called {calls[name]} times"
    if len(norms) != 1:
        return f"{len(norms)} BatchNorms read its output"
    bn = norms[0].target
    m = modules[bn]
    filters = modules[name].weight.shape[0]
    if norms[0].args != (node,) or norms[0].kwargs:
        return f"BatchNorm '{bn}' is called with more than this layer's output"
    if calls[bn] != 1:
        return f"BatchNorm '{bn}' is called {calls[bn]} times"
    if not m.affine:
        return f"BatchNorm '{bn}' has no weight and bias (affine=False)"
    if m.num_features != filters:
        return f"BatchNorm '{bn}' has {m.num_features} channels, the layer {filters} filters"
    if any(
        a == f"{bn}.weight" or a == f"{bn}.bias" or a.startswith(f"{bn}.parametrizations.")
        for a in attrs
    ):
        return f"the model reads the weight or bias of BatchNorm '{bn}' elsewhere"
    if any(parametrize.is_parametrized(m, t) for t in masking.NORM_TENSORS):
        return f"BatchNorm '{bn}' already has a parametrized weight or bias"
    return ""


def attach_norms(
    layers: Sequence[Layer], model: nn.Module, prune_bn: bool | None, optimizer, example_inputs=None
):
    """Pair the layers that want it with their BatchNorm, attach its masks and bring them in step
    with the layers' current masks (a method may already have pruned at attach). Returns a note
    for the whole model ('' unless it could not be traced)."""
    layers = [layer for layer in layers if wants_norm(layer, prune_bn)]
    if not layers:
        return ""
    try:
        found, refused = find_norms(model, [layer.name for layer in layers], example_inputs)
    except Exception as e:  # noqa: BLE001 (fx raises many kinds; any of them means "not traced")
        note = untraced_note(NOTE, e, example=example_inputs is not None)
        for layer in layers:
            layer.norm_note = note
        return note
    modules = dict(model.named_modules())
    for layer in layers:
        if layer.name in found:
            layer.norm = Norm(found[layer.name], modules[found[layer.name]])
            masking.attach_norm(layer.norm)
            mask = getattr(masking.parametrization(layer), "mask", None)
            keep = None if mask is None else masking.filters_kept(mask)
            if keep is not None and not bool(keep.all()):
                masking.set_norm_mask(layer.norm, keep, optimizer)
        else:
            layer.norm_note = refused.get(layer.name, "")
    return ""
