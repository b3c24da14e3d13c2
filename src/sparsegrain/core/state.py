"""Nested state dicts <-> (flat tensors, JSON-able rest), for safetensors checkpoints."""

from __future__ import annotations

from typing import Any

import torch

SEP = "/"


def flatten_state(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Tensors go to a flat dict keyed by their path; everything else stays in a JSON-able tree.

    Dict keys must be strings without ``/``; a tensor leaf is replaced by ``{"__tensor__": path}``.
    """
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state
        return tensors, {"__tensor__": prefix}
    if isinstance(state, dict):
        rest = {}
        for k, v in state.items():
            key = str(k)
            if SEP in key:
                raise ValueError(f"state key {key!r} contains {SEP!r}")
            t, r = flatten_state(v, f"{prefix}{SEP}{key}" if prefix else key)
            tensors.update(t)
            rest[key] = r
        return tensors, rest
    if isinstance(state, (list, tuple)):
        rest_list = []
        for i, v in enumerate(state):
            t, r = flatten_state(v, f"{prefix}{SEP}{i}" if prefix else str(i))
            tensors.update(t)
            rest_list.append(r)
        return tensors, rest_list
    return tensors, state


def unflatten_state(tensors: dict[str, torch.Tensor], rest: Any) -> Any:
    """Inverse of ``flatten_state`` (tuples come back as lists)."""
    if isinstance(rest, dict):
        if set(rest) == {"__tensor__"}:
            return tensors[rest["__tensor__"]]
        return {k: unflatten_state(tensors, v) for k, v in rest.items()}
    if isinstance(rest, list):
        return [unflatten_state(tensors, v) for v in rest]
    return rest
