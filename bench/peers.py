"""Train the pruning tools PyTorch itself ships on exactly sparsegrain's budget, for one table.

Reproduce (reference budget, about 17 minutes a run alone on 2 cores; 7 runs per seed):

    .venv/bin/python bench/peers.py --jobs 2 --seeds 0,1 --results bench/results/peers.json \\
        --compare bench/results/campfire_fmnist.json

``--quick`` runs the quick budget instead (20k-image subset, 4 epochs, pruning window scaled to
the shorter run, as ``bench/grid.py --quick``). Finished runs are reused (``--table-only`` only
rebuilds the table from ``--results``); an interrupted run goes on from its last finished epoch
(``checkpoint.safetensors``: weights and masks, optimizer, RNG, step count and ramp; the data
order of an epoch is a function of the seed and the epoch, so it continues as if never stopped),
unless its recipe changed, in which case it starts again.

The peers, each in its own small loop (they cannot use sparsegrain's handle):

- ``ao-block1x4``: ``torch.ao.pruning.WeightNormSparsifier(sparse_block_shape=(1, 4))`` (whole
  1x4 blocks zeroed, lowest mean-square first, per layer) with ``torch.ao.pruning.CubicSL``;
- ``ao-nm2:4``: the same with ``zeros_per_block=2`` and the sparsity level ramped to 1, i.e.
  every 1x4 block ends 2:4 (50%: this peer has one target);
- ``ao-fine``: ``sparse_block_shape=(1, 1)``, unstructured per layer (not in the default set);
- ``prune-global``: ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``, one
  threshold across layers, applied again at every mask update with the increment that brings
  the total to the cubic target (``prune`` masks compose: the amount applies to what is left);
  ``prune.remove`` at the end.

Everything but the pruning is sparsegrain's trainer: the recipe (default: the Campfire window
recipe, whose ``start``/``end``/``frequency`` set the ramp: dense for epoch 1, cubic ramp
epochs 1..6 with a mask update every 100 steps, masks frozen from then on), ``build_data``,
``build_model``, ``param_groups``, ``lr_for`` (the same cosine schedule per step), ``evaluate``,
the same seed, channels_last and loss. The pruned layers are sparsegrain's default: every
Conv/Linear but the first conv and the classifier. Masked weights are left as the peers leave
them (their momentum and weight decay keep acting under the mask; the masks keep them out of
the forward pass).

Neither tool runs on this model as shipped (torch 2.13): ``WeightNormSparsifier`` masks the last
two dims of a weight, so on any conv weight ``(K, C, R, S)`` F.avg_pool2d gets a 6-D input and
raises (torch.ao.pruning supports ``nn.Linear`` only); ``torch.nn.utils.prune`` flattens weights
and masks with ``.view(-1)``, which a channels_last conv weight refuses. The smallest adapters
that make them run: ``GemmWeightNormSparsifier`` hands torch.ao the ``(K, C*R*S)`` GEMM view (the
view sparsegrain's ``block`` and ``nm`` structures use) and reshapes its mask back (the
selection is torch.ao's own code); ``install_hooks`` gives ``prune`` contiguous masks and
importance scores. ``prune``'s hook computes ``mask * weight_orig``, which is contiguous, so
its forward pass convolves with a contiguous weight: that is the tool's cost, kept in its time.

Each run writes ``runs/peers/<budget>/<name>/`` with ``summary.json`` in sparsegrain's format
(top1, top5, sparsity over the pruned layers, per-layer rows, wall_time, structure checked with
``structures.verify`` into ``violations``), ``metrics.jsonl``, ``model.safetensors``,
``masks.safetensors`` and a ``recipe.yaml`` (its ``sparsity`` section is the schedule followed
and the structure the peer's masks have, so ``sparsegrain analyze --run`` reads the run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from grid import quick_sets, record
from torch import nn
from torch.ao.pruning import CubicSL, WeightNormSparsifier
from torch.nn.utils import parametrize, prune

from sparsegrain.analysis.accuracy import evaluate
from sparsegrain.analysis.report import method_label
from sparsegrain.core.errors import ConfigError
from sparsegrain.core.io import (
    atomic_write_text,
    load_tensors,
    optimizer_from_flat,
    optimizer_to_flat,
    save_tensors,
    split_prefix,
)
from sparsegrain.core.schedules import cubic_sparsity
from sparsegrain.core.tables import overall_sparsity
from sparsegrain.data.catalog import build_data
from sparsegrain.recipe.build import build_model
from sparsegrain.recipe.load import load_recipe
from sparsegrain.runs import files as runfiles
from sparsegrain.sparsity.masking import candidate_layers, default_exclude
from sparsegrain.structures import parse_structure, verify
from sparsegrain.train.loop import build_optimizer, lr_for

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "resnet20_fmnist_campfire_window_70.yaml"
TARGETS = (0.5, 0.7, 0.9)


@dataclass(frozen=True)
class Peer:
    method: str  # the summary's method name
    structure: str  # what the final masks are, in sparsegrain's vocabulary
    kind: str  # "ao" or "prune"
    block: tuple[int, int] = (1, 1)
    zeros_per_block: int | None = None  # None: the whole block
    fixed_target: float | None = None  # N:M: the structure sets the sparsity


PEERS = {
    "ao-block1x4": Peer("torch.ao WeightNorm block1x4", "block:1x4", "ao", (1, 4)),
    "ao-nm2:4": Peer("torch.ao WeightNorm 2:4", "nm:2:4", "ao", (1, 4), 2, 0.5),
    "ao-fine": Peer("torch.ao WeightNorm fine", "fine", "ao", (1, 1)),
    "prune-global": Peer("torch.nn.utils.prune global L1", "fine", "prune"),
}
DEFAULT_PEERS = ("ao-block1x4", "ao-nm2:4", "prune-global")


class Ramp:
    """When masks are recomputed: exactly Campfire's rule (``methods/campfire.py``): from
    ``start`` (epochs) on, at the first chance, every ``frequency`` steps and once at ``end``,
    after which the masks are frozen."""

    def __init__(self, start: float, end: float, frequency: int, steps_per_epoch: int):
        self.start, self.end, self.frequency = start, end, frequency
        self.steps_per_epoch = steps_per_epoch
        self.updates, self.frozen = 0, False

    def due(self, steps: int) -> bool:
        epoch = steps / self.steps_per_epoch
        if self.frozen or epoch < self.start:
            return False
        at_end = epoch >= self.end
        if at_end or self.updates == 0 or steps % self.frequency == 0:
            self.updates += 1
            self.frozen = at_end
            return True
        return False


class GemmWeightNormSparsifier(WeightNormSparsifier):
    """``WeightNormSparsifier`` on the ``(K, C*R*S)`` view of conv weights (see the docstring)."""

    def update_mask(self, module, tensor_name, sparsity_level, sparse_block_shape, **kwargs):
        fake = getattr(module.parametrizations, tensor_name)[0]
        w = getattr(module, tensor_name)
        if w.dim() == 2:
            return super().update_mask(
                module, tensor_name, sparsity_level, sparse_block_shape, **kwargs
            )
        view = SimpleNamespace(
            parametrizations=SimpleNamespace(
                **{tensor_name: [SimpleNamespace(mask=torch.ones(w.shape[0], w[0].numel()))]}
            ),
            **{tensor_name: w.reshape(w.shape[0], -1)},
        )
        super().update_mask(view, tensor_name, sparsity_level, sparse_block_shape, **kwargs)
        mask2d = getattr(view.parametrizations, tensor_name)[0].mask
        # Keep the weight's memory format (channels_last): the adapter must not slow the conv.
        fake.mask.data = torch.empty_like(w, dtype=mask2d.dtype).copy_(mask2d.reshape(w.shape))


class AoPeer:
    """torch.ao.pruning: parametrizations, a sparsifier and the CubicSL scheduler."""

    def __init__(self, peer: Peer, model: nn.Module, layers: dict, target: float, ramp: Ramp):
        self.ramp = ramp
        nm = peer.zeros_per_block is not None
        self.sparsifier = GemmWeightNormSparsifier(
            sparsity_level=1.0 if nm else target,  # N:M: level 1 = every block at n:m
            sparse_block_shape=peer.block,
            zeros_per_block=peer.zeros_per_block,
        )
        config = [{"tensor_fqn": f"{name}.weight"} for name in layers]
        self.sparsifier.prepare(model, config)
        spe = ramp.steps_per_epoch
        # t counts optimizer steps (scheduler.step() after each); CubicSL then gives exactly
        # the cubic target of sparsegrain's ramp at every step.
        self.scheduler = CubicSL(
            self.sparsifier,
            init_sl=0.0,
            init_t=ramp.start * spe,
            delta_t=1,
            total_t=max((ramp.end - ramp.start) * spe, 1e-9),
            initially_zero=True,
        )
        self.sparsifier.step()  # level 0: all-ones masks; the order CubicSL wants

    def step(self, steps: int) -> None:
        self.scheduler.step()
        if self.ramp.due(steps):
            self.sparsifier.step()

    def resume(self, steps: int) -> None:
        """After the masks were loaded: CubicSL's level at ``steps`` (it counts its calls)."""
        for _ in range(steps):
            self.scheduler.step()

    def finish(self) -> None:
        self.sparsifier.squash_mask()


class PrunePeer:
    """torch.nn.utils.prune: forward pre-hooks; global L1 applied again at every update."""

    def __init__(self, peer: Peer, model: nn.Module, layers: dict, target: float, ramp: Ramp):
        self.layers, self.target, self.ramp = layers, target, ramp
        self.params = [(m, "weight") for m in layers.values()]
        self.total = sum(m.weight.numel() for m in layers.values())

    def resume(self, steps: int) -> None:
        """Nothing to replay: the next update counts the pruned weights of the loaded masks."""

    def step(self, steps: int) -> None:
        if not self.ramp.due(steps):
            return
        r = self.ramp
        s = cubic_sparsity(
            steps / r.steps_per_epoch, initial=0.0, final=self.target, start=r.start, end=r.end
        )
        pruned = sum(
            int((m.weight_mask == 0).sum()) for m in self.layers.values() if prune.is_pruned(m)
        )
        more = round(s * self.total) - pruned
        if more <= 0:
            return
        for m in self.layers.values():
            if not prune.is_pruned(m):
                install_hooks(m)
        # Score the current weights (the `weight` attribute the hook left is from the last
        # forward pass, one optimizer step old), in contiguous memory (see install_hooks).
        scores = {
            (m, "weight"): (m.weight_orig * m.weight_mask).detach().contiguous()
            for m in self.layers.values()
        }
        prune.global_unstructured(
            self.params,
            pruning_method=prune.L1Unstructured,
            amount=more,
            importance_scores=scores,
        )

    def finish(self) -> None:
        for m in self.layers.values():
            if prune.is_pruned(m):
                prune.remove(m, "weight")


def install_hooks(m: nn.Module) -> None:
    """Put ``torch.nn.utils.prune``'s hook and an all-ones mask on ``m.weight``.

    ``prune`` flattens weights and masks with ``.view(-1)`` (``L1Unstructured.compute_mask``,
    ``parameters_to_vector`` in ``global_unstructured``), which fails on a channels_last conv
    weight, the layout sparsegrain's trainer uses. Pruning nothing with contiguous importance
    scores gives a contiguous mask (``default_mask.clone(memory_format=contiguous_format)``);
    from then on every call works and the hook is the usual ``weight_orig * weight_mask``.
    """
    prune.l1_unstructured(m, "weight", amount=0, importance_scores=m.weight.detach().contiguous())


def pruned_layers(model: nn.Module) -> dict[str, nn.Module]:
    """sparsegrain's default targets: every Conv/Linear but the first conv and the classifier."""
    skip = set(default_exclude(model))
    return {n: m for n, m in candidate_layers(model) if n not in skip}


def build_recipe(path: Path, peer: Peer, target: float, seed: int, quick: bool, sets: list[str]):
    data = yaml.safe_load(path.read_text())
    overrides = (quick_sets(data) if quick else []) + [
        f"train.seed={seed}",
        f"sparsity.target={target}",
        f"sparsity.structure={peer.structure}",
        "sparsity.method=campfire",
        "sparsity.fallback=error",
        "sparsity.scope=" + ("global" if peer.kind == "prune" else "layer"),
    ]
    recipe = load_recipe(data, overrides + sets)
    recipe.description = (
        f"Peer run of bench/peers.py: {peer.method}. Model, data and train sections are what "
        "it trained with; the sparsity section is the ramp it followed (start, end, "
        "frequency, target) and the structure its masks have, not a sparsegrain method."
    )
    return recipe


def train_peer(name: str, peer: Peer, recipe, out: Path, threads: int | None) -> dict:
    """One run: sparsegrain's loop with the peer's pruning in place of the handle."""
    tr, sp = recipe.train, recipe.sparsity
    if threads or tr.threads:
        torch.set_num_threads(threads or tr.threads)
    torch.use_deterministic_algorithms(tr.deterministic)
    torch.manual_seed(tr.seed)
    data = build_data(recipe.data, seed=tr.seed)
    model = build_model(recipe, data.num_classes, data.in_channels)
    if tr.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, tr)
    layers = pruned_layers(model)
    spe = len(data.train)
    ramp = Ramp(sp.start, sp.end, sp.frequency, spe)
    pruner = (AoPeer if peer.kind == "ao" else PrunePeer)(peer, model, layers, sp.target, ramp)
    criterion = nn.CrossEntropyLoss(label_smoothing=tr.label_smoothing)
    out.mkdir(parents=True, exist_ok=True)
    history, wall, steps, first = [], 0.0, 0, 0
    ckpt, old = out / runfiles.CHECKPOINT, out / "recipe.yaml"
    if ckpt.is_file() and old.is_file() and old.read_text() == recipe.dump():
        first, steps, history, wall = load_checkpoint(out, model, optimizer, layers, ramp)
        pruner.resume(steps)
        print(f"{name}: resumed after epoch {first} (step {steps})", flush=True)
    else:
        if ckpt.is_file():
            print(f"{name}: recipe changed since {ckpt} was written; starting again", flush=True)
        runfiles.write_recipe(out, recipe)
    for epoch in range(first, tr.epochs):
        t0 = time.perf_counter()
        model.train()
        data.train.set_epoch(epoch)
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in data.train:
            lr = lr_for(recipe, steps / spe)
            for g in optimizer.param_groups:
                g["lr"] = lr
            if tr.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x)
            loss = criterion(logits, y)
            if not torch.isfinite(loss):
                raise SystemExit(f"{name}: non-finite loss at step {steps + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            pruner.step(steps)
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        row = {
            "epoch": epoch + 1,
            "lr": lr_for(recipe, steps / spe),
            "train_loss": loss_sum / seen,
            "train_top1": 100.0 * correct / seen,
        }
        if (epoch + 1) % tr.eval_every == 0 or epoch + 1 == tr.epochs:
            ev = evaluate(model, data.test, tr.channels_last)
            row.update(test_loss=ev["loss"], test_top1=ev["top1"], test_top5=ev["top5"])
        row["sparsity"] = overall_sparsity(layer_rows(model, layers, peer, sp.target))
        row["time"] = time.perf_counter() - t0
        wall += row["time"]
        history.append(row)
        runfiles.write_metrics(out, history)
        save_checkpoint(out, model, optimizer, ramp, epoch + 1, steps, history, wall)
        print(f"{name}: epoch {epoch + 1}/{tr.epochs} " + _brief(row), flush=True)
    pruner.finish()
    assert not any(parametrize.is_parametrized(m) or prune.is_pruned(m) for m in layers.values())
    final = evaluate(model, data.test, tr.channels_last)
    return finish(out, recipe, model, layers, peer, final, history, wall)


def save_checkpoint(out, model, optimizer, ramp, epoch, steps, history, wall) -> None:
    """Everything a peer run needs to go on after ``epoch``, in one file written atomically."""
    opt_t, opt_rest = optimizer_to_flat(optimizer.state_dict())
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"optim.{k}": v for k, v in opt_t.items()})
    for name, m in model.named_modules():  # torch.ao's masks stay out of state_dict()
        if parametrize.is_parametrized(m, "weight"):
            tensors[f"ao_mask.{name}"] = m.parametrizations.weight[0].mask
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "format": "sparsegrain-peer-checkpoint",
        "epoch": epoch,
        "steps": steps,
        "ramp": {"updates": ramp.updates, "frozen": ramp.frozen},
        "wall": wall,
        "history": history,
        "optim": opt_rest,
    }
    save_tensors(out / runfiles.CHECKPOINT, tensors, meta)


def load_checkpoint(out, model, optimizer, layers, ramp) -> tuple[int, int, list[dict], float]:
    """Inverse of ``save_checkpoint``: ``(epoch, steps, history, wall)``. Layers that
    ``torch.nn.utils.prune`` had masked get its hook back first, so the names fit; torch.ao's
    parametrizations are in place from ``prepare`` on, and their masks (which torch.ao leaves
    out of ``state_dict()`` but wants back in ``load_state_dict``) are copied in by hand."""
    tensors, meta = load_tensors(out / runfiles.CHECKPOINT, "checkpoint")
    if meta.get("format") != "sparsegrain-peer-checkpoint":
        raise ConfigError(f"{out / runfiles.CHECKPOINT}: not a checkpoint of bench/peers.py")
    state = split_prefix(tensors, "model.")
    for name, m in layers.items():
        if f"{name}.weight_orig" in state and not prune.is_pruned(m):
            install_hooks(m)
    masks = split_prefix(tensors, "ao_mask.")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {f"{n}.parametrizations.weight.0.mask" for n in masks}:
        raise ConfigError(f"{out / runfiles.CHECKPOINT}: does not fit this peer run's model")
    for name, mask in masks.items():
        model.get_submodule(name).parametrizations.weight[0].mask.copy_(mask)
    optimizer.load_state_dict(optimizer_from_flat(split_prefix(tensors, "optim."), meta["optim"]))
    torch.set_rng_state(tensors["rng.torch"])
    ramp.updates, ramp.frozen = meta["ramp"]["updates"], meta["ramp"]["frozen"]
    return meta["epoch"], meta["steps"], meta["history"], meta["wall"]


def _brief(row: dict) -> str:
    test = f"  test top-1 {row['test_top1']:.2f}%" if "test_top1" in row else ""
    return (
        f"loss {row['train_loss']:.4f}{test}  sparsity {row['sparsity']:.4f}  {row['time']:.0f} s"
    )


def _effective(m: nn.Module) -> torch.Tensor:
    """The weight the forward pass uses, under any peer's mask (or none)."""
    if prune.is_pruned(m):
        return (m.weight_orig * m.weight_mask).detach()
    return m.weight.detach()  # parametrized (torch.ao) or plain


def layer_rows(model: nn.Module, layers: dict[str, nn.Module], peer: Peer, target: float):
    """``Sparsifier.report()``'s rows for a peer-pruned model."""
    rows = []
    for name, m in candidate_layers(model):
        w = _effective(m)
        pruned = name in layers
        rows.append(
            {
                "name": name,
                "shape": list(w.shape),
                "structure": peer.structure if pruned else "dense",
                "target": target if pruned else 0.0,
                "achieved": float((w == 0).sum()) / w.numel(),
                "params": w.numel(),
                "note": "" if pruned else "excluded by default (first conv / classifier)",
            }
        )
    return rows


def finish(out, recipe, model, layers, peer, final, history, wall) -> dict:
    """Weights, masks and summary.json in the format of ``runfiles.finish``."""
    rows = layer_rows(model, layers, peer, recipe.sparsity.target)
    masks = {name: m.weight.detach() != 0 for name, m in layers.items()}
    structure = parse_structure(peer.structure)
    violations = {}
    for name, mask in masks.items():
        problems = verify(mask, structure, is_mask=True)
        if problems:
            violations[name] = problems
    meta = {"format": "sparsegrain-weights", "model": recipe.model.to_dict()}
    save_tensors(out / runfiles.WEIGHTS, model.state_dict(), meta)
    save_tensors(out / runfiles.MASKS, masks, {"format": "sparsegrain-masks"})
    summary = runfiles.summary_record(
        recipe,
        rows,
        final,
        wall,
        violations,
        method=peer.method,
        structure=peer.structure,
        target=recipe.sparsity.target,
        name=out.name,
    )
    summary["torch"] = torch.__version__
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


# -- the grid and its table ---------------------------------------------------------------------


def plan(
    peers: list[str], targets: list[float], seeds: list[int]
) -> list[tuple[str, str, float, int]]:
    """``(run name, peer, target, seed)`` of every run; N:M peers run their one target only."""
    runs = []
    for key in peers:
        peer = PEERS[key]
        for target in [peer.fixed_target] if peer.fixed_target is not None else targets:
            for seed in seeds:
                name = f"{key.replace(':', '-')}_{round(target * 100)}_s{seed}"
                runs.append((name, key, target, seed))
    return runs


def run_one(args, name: str, key: str, target: float, seed: int, threads: int) -> dict:
    out = args.out / ("quick" if args.quick else "reference") / name
    summary = out / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    if args.jobs == 1:
        recipe = build_recipe(args.recipe, PEERS[key], target, seed, args.quick, args.set)
        return train_peer(name, PEERS[key], recipe, out, threads)
    cmd = [sys.executable, __file__, "--only", name, "--peers", key, "--targets", str(target)]
    cmd += ["--seeds", str(seed), "--recipe", str(args.recipe), "--out", str(args.out)]
    cmd += ["--threads", str(threads)] + (["--quick"] if args.quick else [])
    cmd += [x for s in args.set for x in ("--set", s)]
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / f"{name}.log"
    t0 = time.time()
    with open(log, "a") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if code != 0 or not summary.is_file():
        raise SystemExit(f"{name} failed (exit {code}); see {log}")
    print(f"done {name} in {time.time() - t0:.0f} s", flush=True)
    return json.loads(summary.read_text())


def table(results: dict[str, dict]) -> str:
    """One row per (method, structure, target): top-1 mean (min-max over seeds), achieved
    sparsity, wall time; sorted by target, then top-1."""
    groups: dict[tuple, list[dict]] = {}
    for r in results.values():
        groups.setdefault((method_label(r), r["structure"], round(r["target"], 4)), []).append(r)
    dense = [r["top1"] for (m, _, _), rs in groups.items() if m == "dense" for r in rs]
    base = statistics.mean(dense) if dense else None
    rows = [
        "| method | structure | target | achieved | top-1 mean (min-max) | vs dense | seeds "
        "| top-5 | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(
        groups.items(), key=lambda kv: (kv[0][2], -statistics.mean(r["top1"] for r in kv[1]))
    )
    for (method, structure, target), rs in order:
        top1 = [r["top1"] for r in rs]
        mean = statistics.mean(top1)
        spread = f" ({min(top1):.2f}-{max(top1):.2f})" if len(top1) > 1 else ""
        delta = f"{mean - base:+.2f}" if base is not None else ""
        rows.append(
            f"| {method} | {structure} | {target:.2f} | "
            f"{statistics.mean(r['sparsity'] for r in rs):.4f} | {mean:.2f}{spread} | {delta} | "
            f"{len(rs)} | {statistics.mean(r['top5'] for r in rs):.2f} | "
            f"{statistics.mean(r['wall_time'] for r in rs):.0f} |"
        )
    return "\n".join(rows)


def verdict(results: dict[str, dict]) -> str:
    """The bar of the quality table, per structure and target where a peer ran: the peer's mean
    top-1 against sparsegrain's best mean at the same structure and target, and the seed spread
    (the wider min-max range over seeds of the two). Either side is ahead beyond the spread, within
    it, or on one seed (spread unknown); a peer ahead beyond it breaks the bar (bold)."""
    peer_methods = {p.method for p in PEERS.values()}
    groups: dict[tuple, dict[str, list[float]]] = {}
    for r in results.values():
        key = (r["structure"], round(r["target"], 2))
        groups.setdefault(key, {}).setdefault(method_label(r), []).append(r["top1"])
    rows = [
        "| structure | target | sparsegrain's best | peer | peer - best | seed spread | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for (structure, target), methods in sorted(
        groups.items(), key=lambda kv: (-kv[0][1], kv[0][0])
    ):
        ours = {m: v for m, v in methods.items() if m not in peer_methods and m != "dense"}
        if not ours:
            continue
        best = max(ours, key=lambda m: statistics.mean(ours[m]))
        for peer in sorted(m for m in methods if m in peer_methods):
            a, b = methods[peer], ours[best]
            diff = statistics.mean(a) - statistics.mean(b)
            spread = max(max(a) - min(a), max(b) - min(b))
            who = "peer" if diff > 0 else "sparsegrain"
            seeded = min(len(a), len(b)) > 1
            if abs(diff) < 0.005:  # top-1 is given to 0.01
                word = "level"
            elif not seeded:
                word = f"{who} ahead, one seed: spread unknown"
            elif abs(diff) <= spread:
                word = f"{who} ahead within the seed spread"
            elif diff < 0:
                word = "sparsegrain ahead beyond the seed spread"
            else:
                word = "**peer ahead beyond the seed spread**"  # the bar is broken
            spread_s = f"{spread:.2f}" if seeded else "-"
            rows.append(
                f"| {structure} | {target:.2f} | {best} {statistics.mean(b):.2f} "
                f"(n={len(b)}) | {peer} {statistics.mean(a):.2f} (n={len(a)}) | "
                f"{diff:+.2f} | {spread_s} | {word} |"
            )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", default=",".join(DEFAULT_PEERS), help=f"from: {', '.join(PEERS)}")
    p.add_argument("--targets", default=",".join(map(str, TARGETS)), help="final sparsities")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (train.seed)")
    p.add_argument("--recipe", type=Path, default=RECIPE, help="budget and ramp to follow")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "peers")
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="JSON file of summaries "
        "(default: bench/results/peers.json, peers_quick.json with --quick)",
    )
    p.add_argument("--compare", type=Path, nargs="*", default=[], help="grid.py results to add")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (subprocesses)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run")
    p.add_argument("--quick", action="store_true", help="quick budget (smoke check)")
    p.add_argument("--set", action="append", default=[], help="extra recipe override")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one run, in a subprocess
    p.add_argument("--table-only", action="store_true", help="print the table of --results")
    args = p.parse_args()
    peers = [x for x in args.peers.split(",") if x]
    unknown = [x for x in peers if x not in PEERS]
    if unknown:
        raise SystemExit(f"--peers: unknown {unknown}; choose from: {', '.join(PEERS)}")
    targets = [float(x) for x in args.targets.split(",") if x]
    seeds = [int(x) for x in args.seeds.split(",") if x]
    runs = plan(peers, targets, seeds)
    threads = args.threads or max(1, 2 // args.jobs)
    warnings.filterwarnings("ignore", message=".*get_last_sl.*")
    if args.only is not None:
        for name, key, target, seed in runs:
            if name == args.only:
                args.jobs = 1
                run_one(args, name, key, target, seed, threads)
        return
    if args.results is None:
        args.results = (
            ROOT / "bench" / "results" / ("peers_quick.json" if args.quick else "peers.json")
        )
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    if not args.table_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(run_one, args, *run, threads): run[0] for run in runs}
            for future in as_completed(futures):
                summary = future.result()
                summary = {k: v for k, v in summary.items() if k != "layers"}
                results = record(args.results, futures[future], summary)
    shown = dict(results)
    for path in args.compare:
        if not path.is_file():
            print(f"--compare: {path} does not exist yet, left out", file=sys.stderr)
            continue
        shown.update(json.loads(path.read_text()))
    print(table(shown))
    print()
    print(verdict(shown))


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:  # a bad --set, recipe or flag: one line, no traceback
        sys.exit(f"error: {e}")
