"""Files of a run directory: resolved recipe, checkpoint, metrics, final weights, summary.

``DIR/recipe.yaml``        the resolved recipe (every default written out)
``DIR/checkpoint.safetensors``  model, optimizer, sparsity state, RNG; rewritten every epoch
``DIR/metrics.jsonl``      one JSON line per epoch
``DIR/model.safetensors``  final weights, zeros baked in (a plain ``state_dict``)
``DIR/masks.safetensors``  final bool masks of the pruned layers
``DIR/summary.json``       headline figures and the per-layer report
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.io import (
    atomic_write_text,
    load_tensors,
    optimizer_from_flat,
    optimizer_to_flat,
    save_tensors,
    split_prefix,
)
from ..core.state import flatten_state, unflatten_state
from ..core.tables import overall_sparsity
from ..recipe.load import Recipe, load_recipe

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"
MASKS = "masks.safetensors"


def prepare_out_dir(out: Path, *, resume: bool, overwrite: bool, write: bool = True) -> None:
    """Check the output directory (every rank) and, where ``write``, create or clear it."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; choose one")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise ConfigError(f"--resume: no {CHECKPOINT} in {out}; nothing to resume")
        return
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"--out {out}: directory is not empty; give --resume to continue the "
            "run there or --overwrite to replace it"
        )
    if not write:
        return
    if overwrite and out.is_dir():
        for name in (CHECKPOINT, WEIGHTS, MASKS, "metrics.jsonl", "summary.json", "recipe.yaml"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def write_recipe(out: Path, recipe: Recipe) -> None:
    atomic_write_text(out / "recipe.yaml", recipe.dump())


def read_run_recipe(run: Path) -> Recipe:
    path = Path(run) / "recipe.yaml"
    if not path.is_file():
        raise ConfigError(f"--run {run}: no recipe.yaml; is this a sparsegrain run directory?")
    return load_recipe(path)


def write_metrics(out: Path, history: list[dict]) -> None:
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


def save_checkpoint(
    out: Path, model: nn.Module, optimizer, sp, epoch: int, history: list[dict], wall: float
) -> None:
    """Everything needed to continue bit-identically, in one file written atomically."""
    opt_t, opt_rest = optimizer_to_flat(optimizer.state_dict())
    sp_t, sp_rest = flatten_state(sp.state_dict())
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"optim.{k}": v for k, v in opt_t.items()})
    tensors.update({f"sparsity.{k}": v for k, v in sp_t.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "format": "sparsegrain-checkpoint",
        "version": 1,
        "epoch": epoch,
        "wall": wall,
        "history": history,
        "optim": opt_rest,
        "sparsity": sp_rest,
    }
    save_tensors(out / CHECKPOINT, tensors, meta)


def load_checkpoint(out: Path, model: nn.Module, optimizer, sp) -> tuple[int, list[dict], float]:
    tensors, meta = load_tensors(out / CHECKPOINT, "checkpoint")
    if meta.get("format") != "sparsegrain-checkpoint":
        raise ConfigError(f"checkpoint {out / CHECKPOINT}: not a sparsegrain checkpoint")
    if "bn_masks" not in meta["sparsity"]:
        # Written before BatchNorms were masked with their filters: its weights name them
        # unmasked, and the run goes on as it started.
        sp.drop_norms("BN not masked: resumed from a checkpoint that did not mask BatchNorms")
    load_model_state(model, split_prefix(tensors, "model."), str(out / CHECKPOINT))
    sp.load_state_dict(unflatten_state(split_prefix(tensors, "sparsity."), meta["sparsity"]))
    optimizer.load_state_dict(optimizer_from_flat(split_prefix(tensors, "optim."), meta["optim"]))
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["epoch"]), list(meta["history"]), float(meta["wall"])


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` whose mismatches are one-line ConfigErrors naming the source."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ConfigError(f"{source}: weights do not fit this model ({what}); wrong architecture?")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ConfigError(
                f"{source}: '{k}' has shape {list(v.shape)}, the model expects "
                f"{list(own[k].shape)}; wrong architecture or width?"
            )
    model.load_state_dict(state)


def load_init(model: nn.Module, source: str) -> None:
    """Start from trained weights: a run directory, a ``.safetensors`` file, or a foreign
    ``.pt``/``.pth`` state_dict read with ``torch.load(weights_only=True)`` (no code runs)."""
    path = Path(source)
    if path.is_dir():
        path = path / WEIGHTS
    if path.suffix in (".pt", ".pth"):
        tensors = _load_torch_weights(path)
    else:
        tensors, _ = load_tensors(path, "--init weights")
    load_model_state(model, tensors, str(path))


def _load_torch_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"--init weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused or a corrupt archive
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"--init {path}: not a loadable weights-only state_dict ({reason})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"--init {path}: expected a state_dict of tensors")
    return state


def finish(
    out: Path,
    recipe: Recipe,
    model: nn.Module,
    sp,
    final: dict[str, float],
    history: list[dict],
    wall: float,
    violations: dict[str, list[str]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write final weights, masks and summary.json; return the summary."""
    rows = sp.report()
    weights = model.state_dict()
    meta = {"format": "sparsegrain-weights", "model": recipe.model.to_dict()}
    save_tensors(out / WEIGHTS, weights, meta)
    save_tensors(out / MASKS, sp.masks(), {"format": "sparsegrain-masks"})
    dense = recipe.sparsity.method == "dense"
    summary = summary_record(
        recipe,
        rows,
        final,
        wall,
        violations,
        method=recipe.sparsity.method,
        structure="dense" if dense else recipe.sparsity.structure,
        target=0.0 if dense else recipe.sparsity.target,
    )
    if not dense:
        summary["scope"] = recipe.sparsity.scope  # one threshold over all layers, or per layer
    summary.update(sp.method.summary_extra())
    summary.update(extra or {})
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def summary_record(
    recipe: Recipe,
    rows: list[dict],
    final: dict[str, float],
    wall: float,
    violations: dict[str, list[str]],
    *,
    method: str,
    structure: str,
    target: float,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` fields of a finished run (the per-layer ``rows`` of a report)."""
    return {
        "name": recipe.name if name is None else name,
        "model": recipe.model.name,
        "dataset": recipe.data.name,
        "method": method,
        "structure": structure,
        "target": target,
        "sparsity": overall_sparsity(rows),
        "top1": final["top1"],
        "top5": final["top5"],
        "test_loss": final["loss"],
        "epochs": recipe.train.epochs,
        "seed": recipe.train.seed,
        "wall_time": wall,
        "params_total": sum(r["params"] for r in rows),
        "params_nonzero": sum(round(r["params"] * (1 - r["achieved"])) for r in rows),
        "violations": violations,
        "layers": rows,
    }
