"""Training-step time under ``torch.compile``: every method as a ratio to the compiled dense step
of the same model, measured side by side in one run.

Reproduce (CPU, one thread; about 5 minutes once compiled, ``--quick`` about 2; the first
compile of each of the four distinct graphs takes 30-70 s on 2 cores, later runs read
inductor's cache):

    .venv/bin/python bench/compile_speed.py --threads 1 [--quick] [--mode default]

Model: the zoo's ResNet-20 (width 16), 28x28 grey input, batch 128, 10 classes, channels_last,
first conv and classifier dense (sparsegrain's default). Every configuration is its own model,
compiled as ``train.compile`` does it (``torch.compile(model, mode=..., dynamic=False)``), and one
step is the whole user loop: compiled forward and backward, loss (+ ``sp.penalty()``), SGD step
(momentum, weight decay) and ``sp.step()``. Configurations:

- ``dense``: a ``method: dense`` handle (the denominator); ``dense (eager)`` is the same model
  without compile, for scale (above 1: compile makes the dense step faster);
- ``campfire <structure>`` (fine, window with kernel-quota on 1x1 convs, filter with its
  BatchNorms masked), ``torch-ao block:1x4`` and ``torch-prune fine``: masks recomputed every
  ``--frequency`` steps while timed, on a cubic ramp from 0.6 to 0.7 over 2000 steps (the clock
  counts steps), so every update installs new masks (torch-prune's too, which only adds to its
  masks);
- ``oneshot fine``: masks fixed from the start;
- ``feather``: global threshold at its final sparsity 0.9 from the first step (the threshold
  and masks move every step);
- ``admm filter``: the ADMM penalty (rho 0.02, target 0.5) in every loss, and a Z/U update
  every ``--frequency`` steps.

Columns: ``step`` is the configuration's median step over the compiled dense median step of the
same round, the median of these ratios over rounds (an update step is the odd one out of
``--frequency``, so the median is the step between updates; ``bench/overhead.py`` times the
updates themselves); ``compiles`` counts the graphs
torch.compile built for the configuration during the whole run (warm-up included: 1 is one
forward graph, never rebuilt); ``updates`` counts the mask / threshold / Z-U updates made while
timed. Rounds of a few steps of each configuration are interleaved (the order rotates every
round), so drift in the machine's load hits all alike. ``bar`` is issue 20's target for the
compiled sparse step on ResNet-20 (1.10 of compiled dense). Only ratios from one run are
printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

import sparsegrain
from sparsegrain.core.tables import format_table
from sparsegrain.models import create_model
from sparsegrain.recipe.config import COMPILE_MODES
from sparsegrain.train.loop import param_groups

BATCH, SIZE, CLASSES = 128, 28, 10
BAR = 1.10
TARGET = 0.7
INITIAL, RAMP_STEPS = 0.6, 2000  # the ramp's sparsity moves at every update while timed


@dataclass
class Arm:
    """One configuration: its (compiled) model, optimizer and handle, and what it measured."""

    label: str
    model: nn.Module  # what the step runs: compiled unless ``eager``
    opt: torch.optim.Optimizer
    sp: object
    updates: int = 0  # mask / threshold / Z-U updates while timed
    compiles: int = 0  # dynamo graphs built during this configuration's steps
    bar: float | None = BAR
    steps: list[float] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)  # median step of each timed round

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        graphs = counters["stats"]["unique_graphs"]
        version = _progress(self.sp)
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(self.model(x), y) + self.sp.penalty()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sp.step()
        self.steps.append(time.perf_counter() - t0)
        self.compiles += counters["stats"]["unique_graphs"] - graphs
        self.updates += _progress(self.sp) != version


def _progress(sp) -> tuple:
    """What moves when the method updates: the mask version, ADMM's Z/U periods, and Feather's
    threshold (recomputed at every step)."""
    every_step = sp.steps if sp.cfg.method == "feather" else 0
    return sp.mask_version, getattr(sp.method, "periods", 0), every_step


def build(label: str, cfg: dict, *, mode: str, eager: bool = False, steps_per_epoch=1) -> Arm:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=CLASSES, in_channels=1, width=16)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(model, 5e-4, False), lr=0.01, momentum=0.9)
    sp = sparsegrain.sparsify_(model, cfg, steps_per_epoch=steps_per_epoch, optimizer=opt)
    run = model if eager else torch.compile(model, mode=mode, dynamic=False)
    return Arm(label, run, opt, sp, bar=None if eager or cfg["method"] == "dense" else BAR)


def arms(mode: str, frequency: int) -> list[Arm]:
    def ramp(structure: str, **kw) -> dict:
        base = {"method": "campfire", "structure": structure, "target": TARGET}
        ramp = {"initial": INITIAL, "start": 0, "end": RAMP_STEPS, "frequency": frequency}
        return {**base, **ramp, **kw}

    dense = {"method": "dense"}
    feather = {"method": "feather", "structure": "fine", "target": 0.9, "end": 0}
    admm = {"method": "admm", "structure": "filter", "target": 0.5, "rho": 0.02}
    admm.update(admm_epochs=1, admm_periods=10**4)  # a Z/U update every epoch: --frequency steps
    return [
        build("dense", dense, mode=mode),
        build("dense (eager)", dense, mode=mode, eager=True),
        build("campfire fine", ramp("fine"), mode=mode),
        build("campfire window", ramp("window", fallback="kernel-quota"), mode=mode),
        build("campfire filter (bn masked)", ramp("filter"), mode=mode),
        build(
            "oneshot fine", {"method": "oneshot", "structure": "fine", "target": TARGET}, mode=mode
        ),
        build("feather (global)", feather, mode=mode),
        build("admm filter (penalty)", admm, mode=mode, steps_per_epoch=frequency),
        build("torch-ao block:1x4", {**ramp("block:1x4"), "method": "torch-ao"}, mode=mode),
        build("torch-prune fine", {**ramp("fine"), "method": "torch-prune"}, mode=mode),
    ]


def measure(args) -> tuple[list[list[str]], dict]:
    # Every configuration compiles the same forward code with its own guards (its own
    # parametrized layer classes): room for all of them in dynamo's cache, so none falls back
    # to eager.
    torch._dynamo.config.recompile_limit = 64
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 1, SIZE, SIZE, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    todo = arms(args.mode, args.frequency)
    for arm in todo:  # warm-up: compiles (forward, backward), first masks, allocator
        t0 = time.perf_counter()
        for _ in range(2):
            arm.step(x, y)
        arm.steps.clear()
        arm.updates = 0
        print(f"  {arm.label}: warm-up {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    for r in range(args.rounds):
        k = r % len(todo)
        for arm in todo[k:] + todo[:k]:
            for _ in range(args.per_round):
                arm.step(x, y)
            arm.rounds.append(statistics.median(arm.steps[-args.per_round :]))
        print(f"  round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    base = statistics.median(todo[0].steps)
    rows, raw = [], {}
    for arm in todo:
        # paired by round: the load of other processes drifts over minutes, not within a round
        ratio = statistics.median(a / d for a, d in zip(arm.rounds, todo[0].rounds))
        bar, verdict = "", ""
        if arm.bar is not None:
            bar, verdict = f"{arm.bar:.2f}", "ok" if ratio <= arm.bar else "OVER"
        rows.append([arm.label, f"{ratio:.3f}", str(arm.compiles), str(arm.updates), bar, verdict])
        raw[arm.label] = {"step": ratio, "compiles": arm.compiles, "updates": arm.updates}
    steps = len(todo[0].steps)
    head = (
        f"resnet20 w16 {SIZE}px b{BATCH}, torch.compile mode '{args.mode}': {steps} timed steps "
        f"per configuration, compiled dense step {1000 * base:.0f} ms"
    )
    return rows, {"label": head, "configs": raw}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few steps (smoke check)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--mode", default="default", choices=COMPILE_MODES, help="torch.compile mode")
    ap.add_argument("--frequency", type=int, default=5, help="steps between mask updates")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    ap.add_argument("--per-round", type=int, default=None, help="steps per configuration a round")
    ap.add_argument("--results", type=Path, default=None, help="also write the ratios as JSON")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = (4, 4) if args.quick else (12, 5)
    args.rounds = args.rounds or quick[0]
    args.per_round = args.per_round or quick[1]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; step over compiled dense")
    rows, raw = measure(args)
    print()
    print(raw["label"])
    print(format_table(rows, ["configuration", "step", "compiles", "updates", "bar", ""]))
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(raw, indent=2) + "\n")


if __name__ == "__main__":
    main()
