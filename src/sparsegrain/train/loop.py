"""The one training loop: epochs, LR schedule, sparsity hooks, evaluation, checkpoints, resume.

A run writes its recipe and a checkpoint before the first step, and a checkpoint after every
epoch, so whenever it stops from then on (Ctrl-C, SIGTERM, a failure, a kill) ``--resume``
continues it to the same bits. SIGTERM stops it like Ctrl-C; a rank that stops answering under
torchrun stops every other rank after ``train.dist_timeout`` seconds, naming it.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis.accuracy import evaluate
from ..core.dist import (
    SINGLE,
    DistInfo,
    all_sum,
    barrier,
    collective_failure,
    gather_ints,
    init_from_env,
    mask_checksum,
    per_rank_batch,
    shutdown,
    weight_checksum,
)
from ..core.errors import ConfigError, TrainingError
from ..core.outputs import logits_of
from ..core.schedules import lr_at
from ..core.tables import format_summary, overall_sparsity
from ..data.catalog import build_data
from ..methods import METHODS
from ..recipe.build import build_model
from ..recipe.load import Recipe
from ..runs import files as runfiles
from ..sparsity.handle import Sparsifier, sparsify_
from .stops import Interrupted, Stops, next_step


def param_groups(model: nn.Module, weight_decay: float, decay_bn_and_bias: bool) -> list[dict]:
    """SGD groups; BN parameters and biases (1-D tensors) get no weight decay unless asked."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 and not decay_bn_and_bias else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, tr) -> torch.optim.Optimizer:
    """SGD of the recipe's ``train`` section (momentum, Nesterov, decay groups)."""
    return torch.optim.SGD(
        param_groups(model, tr.weight_decay, tr.decay_bn_and_bias),
        lr=tr.lr,
        momentum=tr.momentum,
        nesterov=tr.nesterov,
    )


def _freezes(method: str) -> bool:

    return getattr(METHODS.get(method), "freezes_mask", False)


def lr_for(recipe: Recipe, t: float, handle: Sparsifier | None = None) -> float:
    """The LR at clock ``t``; where the method maps ``t`` into phases (``Method.lr_clock``), the
    schedule runs over the current phase, else over the run (with the freeze restart if any)."""
    tr, sp = recipe.train, recipe.sparsity
    clock = handle.method.lr_clock(t) if handle is not None else None
    epochs = tr.epochs
    restart_at = restart_lr = None
    if clock is not None:
        t, epochs = clock
    elif tr.lr_at_freeze != "none" and sp.end is not None and _freezes(sp.method):
        restart_at = sp.end
        restart_lr = tr.freeze_lr if tr.freeze_lr is not None else tr.lr
    return lr_at(
        t,
        base_lr=tr.lr,
        epochs=epochs,
        schedule=tr.schedule,
        warmup_epochs=tr.warmup_epochs,
        step_size=tr.step_size,
        milestones=tr.milestones,
        gamma=tr.gamma,
        min_lr=tr.min_lr,
        restart_at=restart_at,
        restart_lr=restart_lr,
    )


def _progress(loader, enabled: bool, desc: str):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=desc, leave=False, mininterval=1.0, dynamic_ncols=True)


def train_epoch(
    model,
    loader,
    optimizer,
    sp: Sparsifier,
    recipe: Recipe,
    epoch: int,
    criterion,
    info: DistInfo = SINGLE,
) -> dict[str, float]:
    """One epoch; the LR is set before every step from the pure schedule. ``model`` is what the
    forward pass goes through (the DistributedDataParallel wrapper under torchrun, compiled
    with ``train.compile``). A non-finite loss stops the run; the loop's checkpoint from before
    epoch ``epoch`` + 1 is kept."""
    tr = recipe.train
    model.train()
    loader.set_epoch(epoch)
    loss_sum, correct, seen = 0.0, 0, 0
    show = tr.progress and info.main
    bar = _progress(loader, show, f"epoch {epoch + 1}/{tr.epochs}")
    for x, y in bar:
        lr = lr_for(recipe, sp.epoch, sp)
        for g in optimizer.param_groups:
            g["lr"] = lr
        if tr.channels_last and x.dim() == 4:  # images; token ids (B, L) stay as they are
            x = x.contiguous(memory_format=torch.channels_last)
        out = logits_of(model(x))
        loss = criterion(out, y)
        total = loss + sp.penalty()
        if not torch.isfinite(total):
            kept = f"the checkpoint after epoch {epoch}" if epoch else "the start checkpoint"
            raise TrainingError(
                f"non-finite loss ({total.detach().item()}) at epoch {epoch + 1}, "
                f"step {sp.steps + 1}; {kept} is kept (lower train.lr?)"
            )
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        sp.step()
        loss_sum += loss.item() * len(y)
        correct += int((out.argmax(1) == y).sum())
        seen += len(y)
        if show and sp.steps % 10 == 0:
            bar.set_postfix(
                loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}", lr=f"{lr:.3g}"
            )
    loss_sum, correct, seen = all_sum([loss_sum, correct, seen], info)
    return {
        "lr": lr_for(recipe, sp.epoch, sp),
        "train_loss": loss_sum / max(seen, 1),
        "train_top1": 100.0 * correct / max(seen, 1),
    }


def run(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    init: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Train ``recipe`` into ``out_dir`` and return the summary (also written to summary.json).

    Under torchrun (``WORLD_SIZE`` > 1) every process runs this: data is sharded, the model is
    wrapped in DistributedDataParallel, ``data.batch_size`` is the global batch, metrics are
    reduced over ranks, masks are checked identical across ranks, and rank 0 alone writes files.

    Ctrl-C or SIGTERM raises ``Interrupted``; a collective that times out or loses a rank raises
    a ``TrainingError`` naming the ranks that stopped answering. Both say how to continue.
    """
    out, info = Path(out_dir), SINGLE
    with Stops(started=resume) as stops:
        try:
            info = init_from_env(recipe.train.dist_timeout)
            return _run(
                recipe, out, info, stops, resume=resume, overwrite=overwrite, init=init, log=log
            )
        except KeyboardInterrupt as e:
            raise Interrupted(getattr(e, "signum", signal.SIGINT), stops.started) from None
        except RuntimeError as e:
            stop = collective_failure(e, info)
            if stop is None:
                raise
            raise TrainingError(f"{stop}{next_step(stops.started)}") from None
        finally:
            shutdown(info)


def _example_batch(loader) -> torch.Tensor | None:
    """Two inputs of the test split: what the model's graph is traced on (coupling, BatchNorm
    pairing, the classifier). The loaders draw from their own seeded generators, so reading
    one batch changes nothing in training."""
    for x, _ in loader:
        return x[:2]
    return None


def _run(
    recipe: Recipe, out: Path, info: DistInfo, stops: Stops, *, resume, overwrite, init, log
) -> dict:
    if not info.main:
        log = _quiet
    runfiles.prepare_out_dir(out, resume=resume, overwrite=overwrite, write=info.main)
    if resume and not runfiles.has_checkpoint(out):  # stopped before its epoch-0 checkpoint
        log(f"{out} never reached its first checkpoint: starting it from the beginning")
        resume = False
    barrier(info)
    tr = recipe.train
    if tr.threads:
        torch.set_num_threads(tr.threads)
    torch.use_deterministic_algorithms(tr.deterministic)
    torch.manual_seed(tr.seed)
    data_cfg = dataclasses.replace(
        recipe.data, batch_size=per_rank_batch(recipe.data.batch_size, info.world_size)
    )
    data = build_data(data_cfg, seed=tr.seed, rank=info.rank, world_size=info.world_size)
    model = build_model(recipe, data.num_classes, data.in_channels)

    method = METHODS.get(recipe.sparsity.method)
    if init is not None:
        runfiles.load_init(model, init)
    elif method.needs_init and not resume:
        raise ConfigError(
            f"method '{recipe.sparsity.method}' starts from a trained model: "
            "give --init RUN_DIR or a weights file"
        )
    if tr.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, tr)
    sp = sparsify_(
        model,
        recipe.sparsity,
        steps_per_epoch=len(data.train),
        optimizer=optimizer,
        epochs=tr.epochs,
        example_inputs=_example_batch(data.test),
    )
    sp.dist = info
    forward = _compiled(_ddp(model, info), tr)
    with runfiles.RunDir(out, resume=resume, overwrite=overwrite, write=info.main) as rd:
        history: list[dict] = []
        start_epoch, wall = 0, 0.0
        if resume:
            start_epoch, history, wall = runfiles.load_checkpoint(rd.path, model, optimizer, sp)
            log(f"resuming {out} at epoch {start_epoch + 1}/{tr.epochs}")
        else:
            with stops.held():  # the recipe, the checkpoint and the flag, or none of them
                _start(rd.path, recipe, model, optimizer, sp, info)
                rd.commit()  # the new run has started: it replaces an old one (--overwrite) now
                stops.started = True
            barrier(info)
        parts = _Parts(model, forward, data, optimizer, sp)
        return _epochs(rd.path, recipe, parts, info, log, start_epoch, history, wall)


@dataclasses.dataclass
class _Parts:
    """What a training process has built before its first step."""

    model: nn.Module
    forward: nn.Module  # the model or its DDP wrapper, compiled with train.compile
    data: Any
    optimizer: torch.optim.Optimizer
    sp: Sparsifier


def _epochs(out, recipe, parts: _Parts, info, log, start, history, wall) -> dict:
    """The epochs from ``start`` on, each checkpointed, then the final evaluation and files."""
    tr = recipe.train
    model, forward, data, optimizer, sp = (
        parts.model, parts.forward, parts.data, parts.optimizer, parts.sp
    )  # fmt: skip
    criterion = nn.CrossEntropyLoss(label_smoothing=tr.label_smoothing)
    for epoch in range(start, tr.epochs):
        t0 = time.perf_counter()
        row = {
            "epoch": epoch + 1,
            **train_epoch(forward, data.train, optimizer, sp, recipe, epoch, criterion, info),
        }
        if (epoch + 1) % tr.eval_every == 0 or epoch + 1 == tr.epochs:
            ev = evaluate(model, data.test, tr.channels_last, info)
            row.update(test_loss=ev["loss"], test_top1=ev["top1"], test_top5=ev["top5"])
        row["sparsity"] = overall_sparsity(sp.report())
        row.update(sp.method.metrics())
        row["time"] = time.perf_counter() - t0
        wall += row["time"]
        history.append(row)
        if info.main:
            runfiles.save_checkpoint(out, model, optimizer, sp, epoch + 1, history, wall)
            runfiles.write_metrics(out, history)
        barrier(info)
        log(_epoch_line(row, tr.epochs))
    violations = sp.verify()
    sp.finalize()
    final = evaluate(model, data.test, tr.channels_last, info)
    ranks = {
        "world_size": info.world_size,
        "mask_checksums": gather_ints(mask_checksum(sp.masks()), info),
        "weight_checksums": gather_ints(weight_checksum(model), info),
    }
    summary = {}
    if info.main:
        summary = runfiles.finish(
            out, recipe, model, sp, final, history, wall, violations, extra={"ranks": ranks}
        )
        log("")
        log(format_summary(summary))
    barrier(info)
    return summary


def _start(out: Path, recipe: Recipe, model, optimizer, sp: Sparsifier, info: DistInfo) -> None:
    """Write the recipe and the checkpoint of epoch 0 (rank 0): from here on --resume continues
    the run. A failure of the checkpoint takes the recipe written here back, leaving what a
    fresh start expects (a file that was there before is never removed)."""
    if not info.main:
        return
    runfiles.write_recipe(out, recipe)
    try:
        runfiles.save_checkpoint(out, model, optimizer, sp, 0, [], 0.0)
    except BaseException:
        (out / "recipe.yaml").unlink(missing_ok=True)
        raise


def _quiet(*args, **kwargs) -> None:
    """Ranks other than 0 print nothing."""


def _ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """The model the forward pass goes through: DistributedDataParallel when distributed."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def _compiled(forward: nn.Module, tr) -> nn.Module:
    """``forward`` through ``torch.compile`` when ``train.compile`` asks for it (the forward
    graph and its backward; evaluation runs the module itself). Masks are buffers the handle
    overwrites in place, which the compiled graph reads as inputs: a mask update changes no
    guard, so nothing recompiles. Shapes are static (``dynamic=False``): every training batch
    but an epoch's last has one shape, so the model compiles once for it and at most once for
    a smaller last batch, each graph specialised to its shape. The checkpoints save ``model``,
    never this wrapper, so their keys carry no ``_orig_mod.`` prefix and resume is unchanged."""
    if not tr.compile:
        return forward
    return torch.compile(forward, mode=tr.compile_mode, dynamic=False)


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    test = (
        f"  test loss {row['test_loss']:.4f}  top-1 {row['test_top1']:.2f}%"
        if "test_top1" in row
        else ""
    )
    return (
        f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.4g}  train loss "
        f"{row['train_loss']:.4f}  top-1 {row['train_top1']:.2f}%{test}  "
        f"sparsity {row['sparsity']:.4f}  {row['time']:.0f} s"
    )
