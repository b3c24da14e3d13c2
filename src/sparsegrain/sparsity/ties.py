"""Tied weights: one Parameter held by several modules, masked once for all of them.

When one Parameter is held by several modules (GPT-2's ``lm_head.weight`` is
``transformer.wte.weight``), the first pruned candidate holding it owns it: the same mask (the
same parametrization object) is attached to every other holder (``Layer.ties``), so the shared
tensor is masked the same way wherever it is used, trained through that mask, and baked once; a
later candidate holding it is left dense, with a note naming the owner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .candidates import join_name

if TYPE_CHECKING:
    from .masking import Layer


def tie_layers(model: nn.Module, layers: list[Layer]) -> None:
    """Give every pruned layer the other holders of its Parameter (``Layer.ties``); a later
    pruned layer holding a Parameter already owned is left dense, masked with the owner."""
    holders: dict[int, list[tuple[str, nn.Module, str]]] = {}
    seen: set[tuple[int, str]] = set()
    for mname, m in model.named_modules(remove_duplicate=False):
        for pname, p in m._parameters.items():
            if p is not None and (id(m), pname) not in seen:
                seen.add((id(m), pname))
                holders.setdefault(id(p), []).append((join_name(mname, pname), m, pname))
    owners: dict[int, Layer] = {}
    for layer in layers:
        if layer.structure is None:
            continue
        key = id(layer.param)
        owner = owners.get(key)
        if owner is not None:
            layer.structure, layer.block = None, ""
            layer.note = f"no structure of its own: tied to '{owner.name}' (one Parameter)"
            continue
        owners[key] = layer
        others = tuple(
            h for h in holders.get(key, []) if not (h[1] is layer.module and h[2] == layer.tensor)
        )
        if others:
            layer.ties = others
            tied = ", ".join(h[0] for h in others)
            layer.note = "; ".join(n for n in (layer.note, f"tied with {tied}: one mask") if n)
    for layer in layers:
        owner = owners.get(id(layer.param))
        if owner is None or owner is layer or "tied to" in layer.note:
            continue
        layer.note = "; ".join(
            n for n in (layer.note, f"masked with '{owner.name}' (tied Parameter)") if n
        )
