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
from .rundir import (  # noqa: F401  (the names of a run directory, used through this module)
    ANALYSIS,
    CHECKPOINT,
    JOURNAL,
    LOCK,
    MASKS,
    METRICS,
    RECIPE,
    RUN_FILES,
    STAGING,
    SUMMARY,
    WEIGHTS,
    RunDir,
    RunLock,
    has_checkpoint,
    is_run_dir,
    prepare_out_dir,
)

# Recipe keys that cannot change a run's numbers: how many threads, progress bars, the
# distributed timeout, loader workers (the order and augmentation of every epoch do not depend
# on them). A resumed run may change them; any other key must stay as saved.
RUNTIME_KEYS = ("train.threads", "train.progress", "train.dist_timeout", "data.num_workers")


def recipe_differences(saved: Recipe, given: Recipe) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, given value)`` for every recipe key that differs, leaving out
    ``RUNTIME_KEYS``."""
    a, b = _dotted(saved.to_dict()), _dotted(given.to_dict())
    keys = [k for k in dict.fromkeys([*a, *b]) if k not in RUNTIME_KEYS]
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def _dotted(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and prefix == "":
            out.update(_dotted(v, f"{key}."))
        else:
            out[key] = v
    return out


def write_recipe(out: Path, recipe: Recipe) -> None:
    atomic_write_text(out / RECIPE, recipe.dump())


def read_run_recipe(run: Path, flag: str = "--run") -> Recipe:
    """The resolved recipe a run directory was trained with; ``flag`` names the directory's
    option in messages."""
    path, staged = Path(run) / RECIPE, Path(run) / STAGING
    if (staged / JOURNAL).is_file() and (staged / RECIPE).is_file():
        path = staged / RECIPE  # a new run whose swap in was cut short: the next writer ends it
    if not path.is_file():
        raise ConfigError(f"{flag} {run}: no recipe.yaml; is this a sparsegrain run directory?")
    return load_recipe(path)


def write_metrics(out: Path, history: list[dict]) -> None:
    atomic_write_text(out / METRICS, "".join(json.dumps(r) + "\n" for r in history))


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
    """Restore model, optimizer, sparsity state and RNG from ``out``'s checkpoint; returns
    ``(epoch, history, wall)``. Metadata of the wrong shape, a missing key or tensor, an epoch
    below 0 or beyond the run's ``train.epochs`` (``sp.epochs``): a ConfigError naming the file
    and the key."""
    path = Path(out) / CHECKPOINT
    tensors, meta = load_tensors(path, "checkpoint")
    if meta.get("format") != "sparsegrain-checkpoint":
        raise ConfigError(f"checkpoint {path}: not a sparsegrain checkpoint")
    epoch, history, wall = _check_meta(path, meta, getattr(sp, "epochs", None))
    if "rng.torch" not in tensors:
        raise ConfigError(f"checkpoint {path}: no tensor 'rng.torch'")
    if "bn_masks" not in meta["sparsity"]:
        # Written before BatchNorms were masked with their filters: its weights name them
        # unmasked, and the run goes on as it started.
        sp.drop_norms("BN not masked: resumed from a checkpoint that did not mask BatchNorms")
    load_model_state(model, split_prefix(tensors, "model."), str(path))
    _check_run_tensors(path, tensors, meta, optimizer, sp)
    parts = (
        ("sparsity", lambda: sp.load_state_dict(
            unflatten_state(split_prefix(tensors, "sparsity."), meta["sparsity"])
        )),
        ("optim", lambda: optimizer.load_state_dict(
            optimizer_from_flat(split_prefix(tensors, "optim."), meta["optim"])
        )),
        ("rng.torch", lambda: torch.set_rng_state(tensors["rng.torch"])),
    )  # fmt: skip
    for key, restore in parts:
        try:
            restore()
        except ConfigError as e:
            raise ConfigError(f"checkpoint {path}: {e}") from None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
            what = f"key {e.args[0]!r} is missing" if isinstance(e, KeyError) else _reason(e)
            raise ConfigError(
                f"checkpoint {path}: '{key}' does not fit this run ({what})"
            ) from None
    _check_steps(path, sp, epoch)
    return epoch, history, wall


def _check_run_tensors(path: Path, tensors: dict, meta: dict, optimizer, sp) -> None:
    """The optimizer and sparsity parts of a checkpoint fit the run before they are loaded:
    every optimizer state entry names one of the run's parameters, its tensors have that
    parameter's shape and dtype (or are 0-d, like a step count) and are finite, the saved
    hyperparameters equal the recipe's (``lr`` excepted: the schedule sets it every step), and
    every sparsity tensor the run has has the run's shape and dtype. ``load_state_dict`` of
    either copies what it is given (a float mask of 3s, momentum of another shape), and the
    run would fail or go wrong later."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    scalars = meta["optim"]["scalars"]
    for key, st in scalars.items():
        if not (key.isdigit() and int(key) < len(params)) or not isinstance(st, dict):
            raise ConfigError(
                f"checkpoint {path}: 'optim.scalars' names parameter {key!r}; this run has "
                f"{len(params)} parameters"
            )
    for key, t in split_prefix(tensors, "optim.").items():
        idx, _, name = key.partition(".")
        if not (idx.isdigit() and int(idx) < len(params)) or not name:
            raise ConfigError(
                f"checkpoint {path}: tensor 'optim.{key}' names no parameter of this run "
                f"({len(params)} parameters)"
            )
        p = params[int(idx)]
        if t.ndim and (tuple(t.shape) != tuple(p.shape) or t.dtype != p.dtype):
            raise ConfigError(
                f"checkpoint {path}: tensor 'optim.{key}' is {t.dtype} {list(t.shape)}, its "
                f"parameter is {p.dtype} {list(p.shape)}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ConfigError(f"checkpoint {path}: tensor 'optim.{key}' holds nan or inf")
    groups = meta["optim"]["param_groups"]
    for i, (saved, own) in enumerate(zip(groups, optimizer.param_groups)):
        if not isinstance(saved, dict):
            raise ConfigError(f"checkpoint {path}: 'optim.param_groups[{i}]' must be an object")
        for k, v in own.items():
            if k in ("params", "lr") or k not in saved:
                continue
            if saved[k] != v or type(saved[k]) is not type(v):
                raise ConfigError(
                    f"checkpoint {path}: 'optim.param_groups[{i}].{k}' is {saved[k]!r}, this "
                    f"run's recipe gives {v!r}"
                )
        lr = saved.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 <= lr < float("inf"):
            raise ConfigError(
                f"checkpoint {path}: 'optim.param_groups[{i}].lr' must be a finite number "
                f">= 0, got {lr!r}"
            )
    own_sp, _ = flatten_state(sp.state_dict())
    for key, t in split_prefix(tensors, "sparsity.").items():
        ref = own_sp.get(key)
        if ref is not None and (tuple(t.shape) != tuple(ref.shape) or t.dtype != ref.dtype):
            raise ConfigError(
                f"checkpoint {path}: tensor 'sparsity.{key}' is {t.dtype} {list(t.shape)}, "
                f"this run's is {ref.dtype} {list(ref.shape)}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ConfigError(f"checkpoint {path}: tensor 'sparsity.{key}' holds nan or inf")


def _check_steps(path: Path, sp, epoch: int) -> None:
    """The restored step count is one an ``epoch``-epoch run can have reached."""
    steps, per_epoch = getattr(sp, "steps", 0), getattr(sp, "steps_per_epoch", None)
    most = (epoch + 1) * per_epoch if isinstance(per_epoch, int) else None
    if steps < 0 or (most is not None and steps > most):
        raise ConfigError(
            f"checkpoint {path}: 'sparsity.steps' is {steps}, a run at epoch {epoch} has made "
            f"{epoch * per_epoch if most is not None else 'some'} steps"
        )


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_meta(path: Path, meta: dict, epochs: float | None) -> tuple[int, list[dict], float]:
    """The checkpoint metadata's epoch, history and wall time, every key checked."""
    kinds = {"epoch": int, "wall": (int, float), "history": list, "optim": dict, "sparsity": dict}
    names = {int: "an integer", (int, float): "a number", list: "a list", dict: "an object"}
    for key, kind in kinds.items():
        if key not in meta:
            raise ConfigError(f"checkpoint {path}: no key '{key}' in its metadata")
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ConfigError(
                f"checkpoint {path}: '{key}' must be {names[kind]}, got {type(value).__name__}"
            )
    epoch, wall, history = meta["epoch"], float(meta["wall"]), meta["history"]
    if epoch < 0:
        raise ConfigError(f"checkpoint {path}: 'epoch' is {epoch}, must be >= 0")
    if epochs is not None and epoch > epochs:
        raise ConfigError(
            f"checkpoint {path}: 'epoch' is {epoch}, beyond this run's train.epochs {epochs:g}"
        )
    if not wall >= 0 or wall == float("inf"):
        raise ConfigError(f"checkpoint {path}: 'wall' must be a finite number >= 0, got {wall}")
    if len(history) != epoch or not all(isinstance(r, dict) for r in history):
        raise ConfigError(
            f"checkpoint {path}: 'history' must hold one object per epoch done ({epoch}), "
            f"got {len(history)} entries"
        )
    for i, row in enumerate(history):
        if row.get("epoch") != i + 1 or not all(_number(v) for v in row.values()):
            raise ConfigError(
                f"checkpoint {path}: 'history[{i}]' must be epoch {i + 1}'s metrics (numbers)"
            )
    for key in ("param_groups", "scalars"):
        if not isinstance(meta["optim"].get(key), list if key == "param_groups" else dict):
            raise ConfigError(f"checkpoint {path}: 'optim.{key}' is missing or malformed")
    return epoch, list(history), wall


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ConfigError(f"{source}: '{k}' holds nan or inf; the weights are corrupt")
    model.load_state_dict(state)


def load_init(model: nn.Module, source: str, flag: str = "--init") -> None:
    """Start from trained weights: a run directory, a ``.safetensors`` file, or a foreign
    ``.pt``/``.pth`` state_dict read with ``torch.load(weights_only=True)`` (no code runs).
    ``flag`` names the option that gave ``source`` in messages."""
    path = Path(source)
    if path.is_dir():
        path = path / WEIGHTS
    if path.suffix in (".pt", ".pth"):
        tensors = _load_torch_weights(path, flag)
    else:
        tensors, _ = load_tensors(path, f"{flag} weights")
    load_model_state(model, tensors, str(path))


def _load_torch_weights(path: Path, flag: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"{flag} weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused or a corrupt archive
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{flag} {path}: not a loadable weights-only state_dict ({reason})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{flag} {path}: expected a state_dict of tensors")
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
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
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
