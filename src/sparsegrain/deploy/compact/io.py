"""Compacted models on disk without pickle: safetensors + a JSON architecture description.

The description is the original model's zoo spec (``name``, ``num_classes``, ``in_channels``,
options) plus the kept heads of every attention module that lost some and, per changed layer (or
sliced parameter), the kept output/input channel indices and whether it gained a bias. Loading
builds the original architecture from the zoo (or takes a fresh instance of it), shrinks it with
the same indices and loads the tensors strictly: no code runs from the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...core.errors import ConfigError
from ...core.io import load_tensors, save_tensors
from ...models import create_model
from ...runs.files import load_model_state
from .core import CompactResult
from .fold import apply_folds_layout_
from .heads import apply_heads_
from .plan import LayerChannels
from .rebuild import shrink_

FORMAT = "sparsegrain-compact"


def save_compact(
    path: str | Path,
    result: CompactResult,
    model_spec: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``result.model``'s weights and its architecture description to ``path``.

    ``model_spec``: what ``create_model`` needs to rebuild the original (``name``,
    ``num_classes``, ``in_channels`` and options); ``None`` for a model outside the zoo, which
    then loads only with ``load_compact(path, model=<fresh original>)``."""
    meta = {
        "format": FORMAT,
        "version": 1,
        "model": model_spec,
        "layers": {n: s.to_dict() for n, s in result.layers.items()},
        "heads": result.heads,
        "folded": result.folded,
        "channels_last": result.channels_last,
        "check": {"max_abs_diff": result.max_abs_diff},
        "params": {"before": result.params_before, "after": result.params_after},
        "macs": {"before": result.macs_before, "after": result.macs_after},
        **(extra or {}),
    }
    save_tensors(path, result.model.state_dict(), meta)


def load_compact(path: str | Path, model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a compacted model from ``path``; returns ``(model, metadata)`` (eval mode).

    ``model``: a fresh instance of the original architecture (default: built from the zoo spec
    in the file)."""

    tensors, meta = load_tensors(path, "compacted model")
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a compacted model (format {meta.get('format')!r})")
    if model is None:
        spec = dict(meta.get("model") or {})
        if "name" not in spec:
            raise ConfigError(f"{path}: no zoo model named in it; pass model=<original model>")
        name = spec.pop("name")
        model = create_model(
            name,
            num_classes=spec.pop("num_classes", 10),
            in_channels=spec.pop("in_channels", 3),
            **spec,
        )
    layers = {n: LayerChannels.from_dict(d) for n, d in meta.get("layers", {}).items()}
    heads = meta.get("heads") or {}
    if not isinstance(heads, dict):
        raise ConfigError(f"{path}: 'heads' must map attention modules to kept head indices")
    folded = meta.get("folded") or {}
    if not isinstance(folded, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in folded.items()
    ):
        raise ConfigError(f"{path}: 'folded' must map BatchNorm names to layer names")
    apply_heads_(model, heads)
    shrink_(model, layers)
    apply_folds_layout_(model, folded)
    load_model_state(model, tensors, str(path))
    if meta.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), meta
