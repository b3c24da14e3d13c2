"""Training-step time of every sparsegrain method and structure, and of PyTorch's own pruning
tools, as a ratio to dense training of the same model, all measured in one run.

Reproduce (CPU; about 10 minutes, ``--quick`` about 2):

    .venv/bin/python bench/overhead.py --threads 1 [--quick] [--models resnet20,resnet50]

One step is the whole user loop: forward, loss (+ ``sp.penalty()``), backward, SGD step (momentum,
weight decay) and ``sp.step()``. Models: ResNet-20 (width 16, 28x28 grey, batch 128) and a
ResNet-50 shape (``resnet50`` small_input, 28x28 RGB, batch 8; 23.4M pruned weights), channels_last,
first conv and classifier dense (sparsegrain's default). Configurations:

- ``dense``: the same loop through a ``method: dense`` handle (the denominator);
- ``campfire <structure>`` for fine, vector, kernel, filter (Mao), window, kernel-quota, combined
  (Campfire), nm:2:4 and block:4x4, target 0.7 (nm: 0.5; window and combined put kernel-quota on
  1x1 convs, as the shipped recipes): forward/backward through the masks, and a mask update;
- ``oneshot fine``: masks fixed from the start;
- ``feather``: global threshold at its final sparsity 0.9 from the first step, so every step
  pays for the exact quantile and the operator;
- ``admm filter``: the ADMM penalty in every loss (rho 0.02, target 0.5), before the hard prune;
- ``torch.nn.utils.prune``: ``l1_unstructured`` (0.7) forward pre-hooks on the same layers; its
  update is a ``global_unstructured`` increment on top of the masks, as ``method: torch-prune``
  makes at every mask update (``sparsegrain.methods.torch_prune``);
- ``torch.ao WeightNorm``: ``WeightNormSparsifier`` (block 1x4, 0.7) parametrizations through the
  GEMM-view adapter of ``sparsegrain.methods.torch_ao``; its update is ``sparsifier.step()``.

Columns: ``frozen`` is the median step with masks fixed, over dense; ``ramp`` adds one mask update
amortized over the steps between updates (``--frequency``, 100 as in the recipes; for ADMM one
Z/U update per ``admm_epochs`` = 2 epochs of Fashion-MNIST at this batch), which is what a step
costs on average while masks move; ``update`` is one mask update in dense steps. The update and
the step are timed apart (one update per step would take hours to amortize by running
``frequency`` steps of every configuration): campfire handles are built with ``frequency: 1``
and ``initial = target``, so every ``sp.step()`` is one real mask update at the final target
(scores, selection, mask copy, weight and momentum zeroed), and their step without it is
exactly what a step costs after freeze (``on_step`` returns at once). Feather's and dense's
``sp.step()`` run every step and are in both columns.

Rounds of a few steps of each configuration are interleaved (the order rotates every round), so
drift in the machine's load hits all alike; medians per configuration. ``bar`` is the target
for sparsegrain's methods on ResNet-20 (1.10, Feather 1.25), checked on the larger column.
Only ratios from one run are printed. On a machine whose cores are busy with other jobs, give
``--threads 1`` (see ``bench/feather_overhead.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

import sparsegrain
from sparsegrain.core.tables import format_table
from sparsegrain.methods.torch_ao import gemm_weight_norm_sparsifier
from sparsegrain.models import create_model
from sparsegrain.sparsity.masking import candidate_layers, default_exclude
from sparsegrain.train.loop import param_groups

MODELS = {
    "resnet20": ("resnet20 w16 28px b128", "resnet20", {"width": 16}, 1, 128),
    "resnet50": ("resnet50 small 28px b8", "resnet50", {"small_input": True}, 3, 8),
}
STRUCTURES = (
    "fine",
    "vector",
    "kernel",
    "filter",
    "window",
    "kernel-quota",
    "combined",
    "nm:2:4",
    "block:4x4",
)
FMNIST_TRAIN = 60_000
ADMM_EPOCHS = 2  # the shipped ADMM recipes' period


@dataclass
class Arm:
    """One configuration: a model with its optimizer and handle (or a peer's hooks)."""

    label: str
    family: str  # dense | sparsegrain | torch
    model: nn.Module
    opt: torch.optim.Optimizer
    sp: object | None = None  # sparsegrain handle
    update: Callable[[], object] | None = None  # a peer's / ADMM's mask update, timed apart
    every: int = 1  # steps per update, for the amortized column
    sp_is_update: bool = False  # campfire: every sp.step() is one mask update
    bar: float | None = None
    steps: list[float] = field(default_factory=list)  # forward+backward+SGD (+ per-step sp)
    updates: list[float] = field(default_factory=list)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(self.model(x), y)
        if self.sp is not None:
            loss = loss + self.sp.penalty()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        t1 = time.perf_counter()
        if self.sp is not None:
            self.sp.step()
        t2 = time.perf_counter()
        if self.sp_is_update:
            self.steps.append(t1 - t0)
            self.updates.append(t2 - t1)
        else:
            self.steps.append(t2 - t0)

    def timed_update(self) -> None:
        if self.update is not None:
            t0 = time.perf_counter()
            self.update()
            self.updates.append(time.perf_counter() - t0)


def pruned_layers(model: nn.Module) -> dict[str, nn.Module]:
    """sparsegrain's default targets: every Conv/Linear but the first conv and the classifier."""
    skip = set(default_exclude(model))
    return {n: m for n, m in candidate_layers(model) if n not in skip}


def fresh(name: str, options: dict, in_channels: int):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=in_channels, **options)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(model, 5e-4, False), lr=0.01, momentum=0.9)
    return model, opt


def sparsegrain_arms(spec: tuple, frequency: int, structures) -> list[Arm]:
    _, name, options, in_channels, batch = spec
    spe = FMNIST_TRAIN // batch

    def arm(label, cfg, bar=1.10, steps_per_epoch=10**6, **kw) -> Arm:
        model, opt = fresh(name, options, in_channels)
        sp = sparsegrain.sparsify_(model, cfg, steps_per_epoch=steps_per_epoch, optimizer=opt)
        return Arm(label, "sparsegrain", model, opt, sp, bar=bar, **kw)

    arms = []
    for s in structures:
        target = 0.5 if s.startswith("nm") else 0.7
        cfg = {
            "method": "campfire",
            "structure": s,
            "target": target,
            "initial": target,  # every update at the final target
            "start": 0,
            "end": 10**9,
            "frequency": 1,  # every sp.step() is a mask update: timed apart, amortized
            "fallback": "kernel-quota",
        }
        arms.append(
            arm(f"campfire {s}", cfg, steps_per_epoch=1, every=frequency, sp_is_update=True)
        )
    arms.append(arm("oneshot fine", {"method": "oneshot", "structure": "fine", "target": 0.7}))
    feather = {"method": "feather", "structure": "fine", "target": 0.9, "scope": "global", "end": 0}
    arms.append(arm("feather (global)", feather, bar=1.25))
    admm = {"method": "admm", "structure": "filter", "target": 0.5, "rho": 0.02}
    a = arm("admm filter (penalty)", {**admm, "admm_epochs": ADMM_EPOCHS}, steps_per_epoch=spe)
    a.update, a.every = a.sp.method.update, ADMM_EPOCHS * spe
    arms.append(a)
    return arms


def torch_arms(spec: tuple, frequency: int) -> list[Arm]:
    _, name, options, in_channels, _ = spec
    model, opt = fresh(name, options, in_channels)
    layers = pruned_layers(model)
    for m in layers.values():  # contiguous scores: prune's .view(-1) refuses channels_last
        prune.l1_unstructured(
            m, "weight", amount=0.7, importance_scores=m.weight.detach().contiguous()
        )
    params = [(m, "weight") for m in layers.values()]

    def prune_update() -> None:
        """One gradual update (method torch-prune's): 0.1% more of what is left, global L1."""
        left = sum(int(m.weight_mask.sum()) for m in layers.values())
        scores = {
            (m, "weight"): (m.weight_orig * m.weight_mask).detach().contiguous()
            for m in layers.values()
        }
        prune.global_unstructured(
            params,
            pruning_method=prune.L1Unstructured,
            amount=max(1, left // 1000),
            importance_scores=scores,
        )

    arms = [
        Arm("torch.nn.utils.prune l1 hooks", "torch", model, opt, None, prune_update, frequency)
    ]
    model, opt = fresh(name, options, in_channels)
    sparsifier = gemm_weight_norm_sparsifier(sparsity_level=0.7, sparse_block_shape=(1, 4))
    sparsifier.prepare(model, [{"tensor_fqn": f"{n}.weight"} for n in pruned_layers(model)])
    sparsifier.step()
    arms.append(
        Arm("torch.ao WeightNorm 1x4", "torch", model, opt, None, sparsifier.step, frequency)
    )
    return arms


def measure(key: str, args) -> tuple[list[list[str]], dict]:
    spec = MODELS[key]
    label, _, options, in_channels, batch = spec
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_channels, 28, 28, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g)
    model, opt = fresh(spec[1], options, in_channels)
    dense = Arm("dense", "dense", model, opt, sparsegrain.sparsify_(model, {"method": "dense"}))
    structures = [s for s in args.structures.split(",") if s]
    arms = [dense, *sparsegrain_arms(spec, args.frequency, structures)]
    arms += torch_arms(spec, args.frequency)
    for arm in arms:  # warm-up (first mask, allocator, kernels), not recorded
        arm.step(x, y)
        arm.timed_update()
        arm.steps.clear()
        arm.updates.clear()
    rounds, per_round = args.rounds, args.per_round
    if key == "resnet50":  # a few minutes: fewer steps of a model ~10x the cost
        per_round = max(1, per_round // 2)
    for r in range(rounds):
        k = r % len(arms)
        for arm in arms[k:] + arms[:k]:
            for _ in range(per_round):
                arm.step(x, y)
            arm.timed_update()
        print(f"  {label}: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    base = statistics.median(dense.steps)
    rows, raw = [], {}
    for arm in arms:
        steady = statistics.median(arm.steps) / base
        upd = statistics.median(arm.updates) / base if arm.updates else 0.0
        ramp = steady + upd / arm.every
        bar, verdict = "", ""
        if arm.bar is not None and key == "resnet20":
            bar, verdict = f"{arm.bar:.2f}", "ok" if max(steady, ramp) <= arm.bar else "OVER"
        every = str(arm.every) if arm.updates else ""
        rows.append(
            [
                arm.label,
                arm.family,
                f"{steady:.3f}",
                f"{ramp:.3f}",
                f"{upd:.2f}" if arm.updates else "",
                every,
                bar,
                verdict,
            ]
        )
        raw[arm.label] = {
            "frozen": steady,
            "ramp": ramp,
            "update_in_dense_steps": upd,
            "every": arm.every,
        }
    pruned = sum(layer.param.numel() for layer in arms[1].sp.pruned)
    head = (
        f"{label}: {pruned / 1e6:.2f}M pruned weights, {len(dense.steps)} steps per configuration"
    )
    return rows, {"label": head, "configs": raw}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few steps (smoke check)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--models", default="resnet20,resnet50", help=f"from: {', '.join(MODELS)}")
    ap.add_argument("--structures", default=",".join(STRUCTURES), help="campfire structures")
    ap.add_argument("--frequency", type=int, default=100, help="steps between mask updates")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    ap.add_argument("--per-round", type=int, default=None, help="steps per configuration a round")
    ap.add_argument("--results", type=Path, default=None, help="also write the ratios as JSON")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = (2, 2) if args.quick else (6, 4)
    args.rounds = args.rounds or quick[0]
    args.per_round = args.per_round or quick[1]
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        sys.exit(f"--models: unknown {unknown}; choose from: {', '.join(MODELS)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; step time over dense")
    head = ["configuration", "family", "frozen", "ramp", "update", "every", "bar", ""]
    out = {}
    for key in models:
        rows, raw = measure(key, args)
        out[key] = raw
        print()
        print(raw["label"])
        print(format_table(rows, head))
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
