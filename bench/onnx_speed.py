"""ONNX Runtime speed of compacted models against the dense ONNX model.

Reproduce (CPU, random init, nothing downloaded; needs the ``models`` and ``onnx`` extras):

    .venv/bin/python bench/onnx_speed.py [--models resnet50,mobilenet_v2] [--batches 1,8]
        [--size 224] [--repeats 7] [--threads 1] [--json bench/results/onnx_speed.json]

Each model of ``bench/real_models.py`` is pruned one-shot at 50% on its random init with the
recipe given there (``couple: true``), compacted with ``fold_bn=True`` (the inference form), and
both the dense and the compacted model are exported with ``sparsegrain.deploy.onnx.export_onnx``
(dynamo exporter, checked by onnxruntime). Both ONNX files then run in one onnxruntime session
each (``intra_op_num_threads = --threads``, graph optimizations on) at every batch size; every
variant runs once per round, rounds interleaved, after a warm-up, and each time is the median
over rounds. Printed: the speedup ``dense / compacted`` and the FLOP-ideal speedup (dense MACs /
compacted MACs, ``analysis.flops``), and their ratio. Absolute times are not printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from real_models import MODELS  # bench/ is the script directory

import sparsegrain
from sparsegrain.core.tables import format_table
from sparsegrain.deploy.compact import compact
from sparsegrain.deploy.onnx import export_onnx, onnxruntime_module


def pruned(name: str, size: int):
    factory, part, example = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = example(size)()
    recipe = {"method": "oneshot", "target": 0.5, "couple": True, **part}
    sparsegrain.sparsify_(model, recipe, steps_per_epoch=1, example_inputs=x)
    sparsegrain.finalize_(model)
    return model, x


def session(ort, path: Path, threads: int):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def feeds(sess, x: torch.Tensor, batch: int) -> dict:
    reps = [batch] + [1] * (x.dim() - 1)
    xb = x[:1].repeat(*reps)
    return {sess.get_inputs()[0].name: xb.numpy()}


def measure(name: str, size: int, batches: list[int], repeats: int, threads: int) -> list[dict]:
    ort = onnxruntime_module()
    model, x = pruned(name, size)
    r = compact(model, x, fold_bn=True)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        dense_path, small_path = Path(d) / "dense.onnx", Path(d) / "compact.onnx"
        export_onnx(model.eval(), x, dense_path)
        export_onnx(r.model, x, small_path)
        sessions = {
            "dense": session(ort, dense_path, threads),
            "compact": session(ort, small_path, threads),
        }
        for batch in batches:
            inputs = {k: feeds(s, x, batch) for k, s in sessions.items()}
            times = {k: [] for k in sessions}
            for k, s in sessions.items():  # warm-up
                s.run(None, inputs[k])
            for _ in range(repeats):
                for k, s in sessions.items():
                    t0 = time.perf_counter()
                    s.run(None, inputs[k])
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            speedup = med["dense"] / med["compact"]
            rows.append({
                "model": name, "batch": batch, "speedup": speedup, "ideal": r.macs_ratio,
                "fraction_of_ideal": speedup / r.macs_ratio,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,mobilenet_v2,convnext_tiny,hf:bert")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    batches = [int(b) for b in a.batches.split(",")]
    rows = []
    for name in a.models.split(","):
        rows += measure(name, a.size, batches, a.repeats, a.threads)
    table = [
        [r["model"], str(r["batch"]), f"{r['speedup']:.2f}x", f"{r['ideal']:.2f}x",
         f"{r['fraction_of_ideal']:.2f}"]
        for r in rows
    ]  # fmt: skip
    print(format_table(table, ["model", "batch", "ORT speedup", "FLOP-ideal", "fraction"]))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
