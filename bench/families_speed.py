"""CPU speed of every model family: dense vs sparsegrain compacted vs Torch-Pruning at equal MACs.

Reproduce (CPU, random init, nothing downloaded; needs the ``models`` and ``bench`` extras; the
full grid with 11 rounds took 5 to 7 minutes on one thread of a busy 2-core machine, ``--quick`` a
minute):

    .venv/bin/python bench/families_speed.py --repeats 11 --min-time 0.3 \\
        --json bench/results/families_speed.json
    .venv/bin/python bench/families_speed.py [--quick] [--models resnet50,hf_bert]
        [--batches 1,8] [--threads 1] [--tp-round-to 8] [--compile]

Models (random init, 1000 classes, 224x224 images): torchvision ResNet-50, MobileNetV2,
EfficientNet-B0, ConvNeXt-Tiny, RegNetY-400MF, ViT-B/16, and a Hugging Face BERT built from a
config (hidden 256, 4 layers, 4 heads, intermediate 1024, sequences of 128 tokens, 2 labels).
Three variants of each, all built from the same dense weights:

- **dense**: the model as built;
- **sparsegrain**: one-shot 50% magnitude pruning (``sparsify_`` with method ``oneshot``,
  ``couple: true``, the default exclusions: first conv and classifier), ``filter`` on CNNs,
  ``neuron`` with whole ``head`` s of attention on transformers (the recipes of
  ``bench/real_models.py``), then ``finalize_`` and ``compact``;
- **torch-pruning**: Torch-Pruning's ``MagnitudePruner`` (L2 magnitude of each channel group,
  the same ratio in every group) with the layers sparsegrain leaves dense by default ignored
  (``sparsity.classifier.default_exclude``: first conv and classifier; a group holding one of
  them stays whole), and its pruning ratio bisected until its MACs equal sparsegrain's (both
  counts are printed). On transformers it keeps the residual
  width as sparsegrain does (the embedding is ignored too, which leaves that group whole) and
  removes MLP neurons; BERT's attention heads go whole through its ``num_heads`` /
  ``prune_num_heads`` options (head ratio = channel ratio). It cannot remove heads of
  ``nn.MultiheadAttention`` (torchvision's ViT) without cutting the residual width, since that
  module's head count and ``embed_dim`` are one number, so there it removes MLP neurons only.

MACs per example are those of ``sparsegrain.analysis.flops`` (layers and attention products);
``ideal = dense MACs / variant MACs`` and ``frac = measured speedup / ideal``.

Timing as ``bench/speed.py``: every variant runs once per round, rounds interleaved
(``--repeats``, after a warm-up), each time the median over rounds, and only ratios of medians of
one run are printed; ``sg / tp`` is Torch-Pruning's time over sparsegrain's within each round
(so drifts of machine load between rounds cancel), its median and quartiles over rounds: on
models where both reach the same architecture it shows the noise of the machine. CNNs are run
as deployed: BatchNorm folded into the conv before it (``torch.fx`` ``fuse``) and channels_last,
the same for all three variants; freed buffers stay in the heap (``speed.keep_heap``).
``--compile`` times every variant through ``torch.compile`` (inductor, ``dynamic=False``: one
graph per variant and batch, compiled during the warm-up) instead of eager. Nothing
is trained. Also printed per model: how many
conv/linear layers of each pruned variant have an output width that is a multiple of 8, and in
how many layers the two pruned variants differ, the first places to look when one of them is
faster at equal MACs.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from speed import interleaved, keep_heap
from torch import nn
from torch.fx.experimental.optimization import fuse

import sparsegrain
from sparsegrain.analysis.flops import layer_weights, model_flops, profile
from sparsegrain.core.tables import format_table
from sparsegrain.deploy.compact import compact
from sparsegrain.models.external import import_torchvision, import_transformers
from sparsegrain.sparsity.classifier import default_exclude

CNN = {"structure": "filter"}


def transformer(attention: str) -> dict:
    """MLP hidden units as neurons, attention heads whole (``bench/real_models.py``)."""
    return {"structure": "neuron", "overrides": {attention: {"structure": "head"}}}


@dataclass(frozen=True)
class Family:
    """How one model is built, fed, pruned by sparsegrain, and configured for Torch-Pruning."""

    build: Callable[[], nn.Module]
    recipe: dict
    example: Callable[[int], torch.Tensor]  # batch -> input
    image: bool = True
    # Torch-Pruning: modules whose channel group stays whole (the residual width of a
    # transformer), and {qkv Linear: heads} for its head pruning
    keep: Callable[[nn.Module], list[nn.Module]] = lambda m: []
    heads: Callable[[nn.Module], dict[nn.Module, int]] = lambda m: {}

    @property
    def cnn(self) -> bool:
        """Run as CNNs are deployed on CPU: BatchNorm folded, channels_last."""
        return self.recipe is CNN


def tv(name: str, **kw) -> Callable[[], nn.Module]:
    return lambda: getattr(import_torchvision().models, name)(num_classes=1000, **kw)


def images(size: int) -> Callable[[int], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return lambda batch: torch.randn(batch, 3, size, size, generator=g)


def tokens(length: int, vocab: int) -> Callable[[int], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return lambda batch: torch.randint(0, vocab, (batch, length), generator=g)


def bert(hidden: int, layers: int, heads: int, intermediate: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        t = import_transformers()
        cfg = t.BertConfig(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=intermediate, num_labels=2,
        )  # fmt: skip
        return t.BertForSequenceClassification(cfg)

    return build


def bert_heads(model: nn.Module) -> dict[nn.Module, int]:
    """Torch-Pruning's ``num_heads``: each query/key/value Linear of a BERT self-attention."""
    out = {}
    for m in model.modules():
        if type(m).__name__ == "BertSelfAttention":
            out.update(dict.fromkeys((m.query, m.key, m.value), m.num_attention_heads))
    return out


def families(quick: bool) -> dict[str, Family]:
    size = 32 if quick else 224
    vit_kw = {"image_size": size}
    vit = transformer("*self_attention*")
    hf = bert(32, 2, 4, 128) if quick else bert(256, 4, 4, 1024)
    return {
        "resnet50": Family(tv("resnet50"), CNN, images(size)),
        "mobilenet_v2": Family(tv("mobilenet_v2"), CNN, images(size)),
        "efficientnet_b0": Family(tv("efficientnet_b0"), CNN, images(size)),
        "convnext_tiny": Family(tv("convnext_tiny"), CNN, images(size)),
        "regnet_y_400mf": Family(tv("regnet_y_400mf"), CNN, images(size)),
        "vit_b_16": Family(
            tv("vit_b_16", **vit_kw), vit, images(size), keep=lambda m: [m.conv_proj]
        ),
        "hf_bert": Family(
            hf,
            transformer("*attention*"),
            tokens(16 if quick else 128, 30522),
            image=False,
            keep=lambda m: [m.bert.embeddings.word_embeddings],
            heads=bert_heads,
        ),
    }


def macs(model: nn.Module, x: torch.Tensor) -> int:
    """Dense MACs per example (``analysis.flops``: layers and attention products)."""
    return int(model_flops(profile(model, x), layer_weights(model))["total"]["dense"])


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sparsegrain_variant(dense: nn.Module, fam: Family, x: torch.Tensor):
    model = copy.deepcopy(dense)
    recipe = {"method": "oneshot", "target": 0.5, "couple": True, **fam.recipe}
    sparsegrain.sparsify_(model, recipe, steps_per_epoch=1, example_inputs=x)
    sparsegrain.finalize_(model)
    return compact(model, x)


def tp_prune(
    dense: nn.Module, fam: Family, x: torch.Tensor, ratio: float, round_to: int | None = None
) -> nn.Module:
    """A copy of ``dense`` pruned by Torch-Pruning's magnitude pruner at ``ratio`` (kept widths
    rounded to a multiple of ``round_to`` when given: its ``round_to`` option)."""
    import torch_pruning as tp

    model = copy.deepcopy(dense)
    ignored = [model.get_submodule(n) for n in default_exclude(model, x)] + fam.keep(model)
    heads = fam.heads(model)
    head_opts = (
        {"num_heads": heads, "prune_num_heads": True, "prune_head_dims": False}
        if heads
        else {"prune_head_dims": False}
    )
    with warnings.catch_warnings():  # unwrapped class token / position embedding: inferred dim
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MagnitudePruner(
            model,
            x,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio,
            head_pruning_ratio=ratio if heads else 0.0,
            ignored_layers=ignored,
            round_to=round_to,
            output_transform=None if fam.image else (lambda out: out.logits.sum()),
            **head_opts,
        )
        pruner.step()
    for m in model.modules():  # BERT's attention keeps its head count as an attribute
        if type(m).__name__ == "BertSelfAttention":
            m.num_attention_heads = pruner.num_heads[m.query]
            m.all_head_size = m.query.out_features
    return model.eval()


def tp_matched(dense: nn.Module, fam: Family, x: torch.Tensor, target: int, steps: int, **kw):
    """Torch-Pruning at the ratio whose MACs come closest to ``target`` (bisection on the
    ratio, 0.5 tried first: MACs fall as the ratio rises). Returns (model, ratio, MACs, tries)."""
    best = None
    lo, hi = 0.0, 0.95
    tries = []
    for i in range(steps):
        ratio = 0.5 if i == 0 else (lo + hi) / 2
        model = tp_prune(dense, fam, x, ratio, **kw)
        m = macs(model, x)
        tries.append((round(ratio, 5), m))
        if best is None or abs(m - target) < abs(best[2] - target):
            best = (model, ratio, m)
        if abs(m - target) <= 1e-3 * target:
            break
        lo, hi = (ratio, hi) if m > target else (lo, ratio)
    return (*best, tries)


def deployed(model: nn.Module, fam: Family) -> tuple[nn.Module, str]:
    """The model as a CNN is deployed on CPU: BatchNorm folded, channels_last."""
    if not fam.cnn:
        return model, ""
    note = ""
    try:
        model = fuse(model)
    except Exception as e:  # noqa: BLE001 (reported; the variants are then all unfused)
        note = f"not fused: {type(e).__name__}"
    return model.to(memory_format=torch.channels_last), note


def widths(model: nn.Module) -> dict[str, int]:
    """Output width of every Conv2d / Linear by module name."""
    return {
        n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def shape_summary(sg: nn.Module, tpm: nn.Module) -> dict:
    a, b = widths(sg), widths(tpm)
    common = [n for n in a if n in b]
    return {
        "sparsegrain_mult8": [sum(w % 8 == 0 for w in a.values()), len(a)],
        "torch_pruning_mult8": [sum(w % 8 == 0 for w in b.values()), len(b)],
        "differ": [[n, a[n], b[n]] for n in common if a[n] != b[n]],
        "common": len(common),
    }


def run_model(name: str, fam: Family, batches: list[int], args) -> list[dict]:
    torch.manual_seed(0)
    dense = fam.build().eval()
    x1 = fam.example(1)
    t0 = time.perf_counter()
    res = sparsegrain_variant(dense, fam, x1)
    t_sg = time.perf_counter() - t0
    t0 = time.perf_counter()
    tpm, ratio, tp_macs, tries = tp_matched(
        dense, fam, x1, res.macs_after, args.search_steps, round_to=args.tp_round_to
    )
    t_tp = time.perf_counter() - t0
    sizes = {"dense": params(dense), "sparsegrain": params(res.model), "torch_pruning": params(tpm)}
    info = {
        "model": name,
        "macs": {"dense": res.macs_before, "sparsegrain": res.macs_after, "torch_pruning": tp_macs},
        "params": sizes,
        "tp_ratio": ratio,
        "tp_tries": tries,
        "compact_max_abs_diff": res.max_abs_diff,
        "shapes": shape_summary(res.model, tpm),
        "setup_seconds": {"sparsegrain": round(t_sg, 1), "torch_pruning": round(t_tp, 1)},
    }  # fmt: skip
    models = {"dense": dense, "sparsegrain": res.model, "torch_pruning": tpm}
    notes = []
    for k, m in models.items():
        models[k], note = deployed(m, fam)
        notes += [f"{k}: {note}"] if note else []
    info["notes"] = notes
    print(json.dumps({k: v for k, v in info.items() if k != "shapes"}), flush=True)
    rows = []
    for batch in batches:
        x = fam.example(batch)
        if fam.cnn:
            x = x.contiguous(memory_format=torch.channels_last)
        rounds = {}
        timed = models
        if args.compile:  # one static graph per variant and batch, compiled in the warm-up
            timed = {k: torch.compile(m, dynamic=False) for k, m in models.items()}
        med = interleaved(timed, x, args.repeats, args.min_time, rounds)
        row = {**info, "batch": batch, "speedup": {}, "ideal": {}, "frac": {}}
        for k in ("sparsegrain", "torch_pruning"):
            row["speedup"][k] = med["dense"] / med[k]
            row["ideal"][k] = info["macs"]["dense"] / info["macs"][k]
            row["frac"][k] = row["speedup"][k] / row["ideal"][k]
        row["sg_over_tp"] = paired(rounds["torch_pruning"], rounds["sparsegrain"])
        print(json.dumps({"model": name, "batch": batch, "speedup": row["speedup"]}), flush=True)
        rows.append(row)
    return rows


def paired(a: list[float], b: list[float]) -> dict:
    """``a / b`` round by round (both ran back to back in each round, so a change of machine
    load between rounds cancels): median and quartiles over rounds."""
    r = sorted(x / y for x, y in zip(a, b))
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    return {"median": statistics.median(r), "q1": q[0], "q3": q[2]}


def table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        m, s, f = r["macs"], r["speedup"], r["frac"]
        body.append([
            r["model"], str(r["batch"]), f"{m['dense'] / 1e6:.1f}",
            f"{m['sparsegrain'] / 1e6:.1f} / {m['torch_pruning'] / 1e6:.1f}",
            f"{r['ideal']['sparsegrain']:.2f}x / {r['ideal']['torch_pruning']:.2f}x",
            f"{s['sparsegrain']:.2f}x ({f['sparsegrain']:.2f})",
            f"{s['torch_pruning']:.2f}x ({f['torch_pruning']:.2f})",
            "{median:.2f} [{q1:.2f}-{q3:.2f}]".format(**r["sg_over_tp"]),
        ])  # fmt: skip
    head = [
        "model", "batch", "dense MMAC", "MMAC sg / tp", "ideal sg / tp", "sparsegrain (frac)",
        "torch-pruning (frac)", "sg / tp [quartiles]",
    ]  # fmt: skip
    return format_table(body, head)


def shapes_table(rows: list[dict]) -> str:
    body = []
    for r in {r["model"]: r for r in rows}.values():
        s, p = r["shapes"], r["params"]
        body.append([
            r["model"], f"{r['tp_ratio']:.4f}",
            f"{p['sparsegrain'] / 1e6:.2f}M / {p['torch_pruning'] / 1e6:.2f}M",
            "{}/{} / {}/{}".format(*s["sparsegrain_mult8"], *s["torch_pruning_mult8"]),
            f"{len(s['differ'])}/{s['common']}",
        ])  # fmt: skip
    head = ["model", "tp ratio", "params sg / tp", "widths %8 sg / tp", "widths differ"]
    return format_table(body, head)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="32 px images, a tiny BERT: a minute")
    p.add_argument("--models", help="comma-separated (default: all)")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median)")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per timed sample")
    p.add_argument("--search-steps", type=int, default=12, help="Torch-Pruning ratio bisection")
    p.add_argument(
        "--tp-round-to", type=int, help="Torch-Pruning's round_to: kept widths a multiple of N"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument(
        "--compile",
        action="store_true",
        help="time every variant through torch.compile (inductor, static shapes) instead of eager",
    )
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args()
    fams = families(args.quick)
    names = args.models.split(",") if args.models else list(fams)
    unknown = [n for n in names if n not in fams]
    if unknown:
        sys.exit(f"--models: unknown {unknown}; choose from {', '.join(fams)}")
    if args.quick:
        args.repeats, args.min_time = min(args.repeats, 3), 0.02
    torch.set_num_threads(args.threads)
    heap = keep_heap()
    print(
        f"settings: threads={torch.get_num_threads()} keep_heap={heap} repeats={args.repeats} "
        f"tp_round_to={args.tp_round_to} compile={args.compile}"
    )
    rows, errors = [], {}
    batches = [int(b) for b in args.batches.split(",")]
    for name in names:
        try:
            rows += run_model(name, fams[name], batches, args)
        except Exception as e:  # noqa: BLE001 (one failing model does not stop the table)
            errors[name] = f"{type(e).__name__}: {e}"[:300]
            print(f"{name}: {errors[name]}", flush=True)
    print(
        "\nspeedup over dense (frac = speedup / ideal, ideal = dense MACs / variant MACs); "
        "sg / tp: Torch-Pruning's time / sparsegrain's, per round"
    )
    print(table(rows))
    print("\nTorch-Pruning ratio matched to sparsegrain's MACs; layer output widths")
    print(shapes_table(rows))
    for name, err in errors.items():
        print(f"{name}: {err}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        settings = {"quick": args.quick, "threads": torch.get_num_threads(), "keep_heap": heap}
        settings.update(tp_round_to=args.tp_round_to, compile=args.compile)
        out = {**settings, "repeats": args.repeats, "rows": rows, "errors": errors}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
