"""Write and read speed of the compressed format per encoding on ResNet-50, beside a plain
safetensors save + load of the same tensors, with every size checked against storage.py.

Reproduce (CPU; about a minute):

    .venv/bin/python bench/compressed_speed.py [--threads 1] [--sparsity 0.5]

Model: the zoo's ``resnet50`` (ImageNet layout, 1000 classes, random init), every conv but the
first given a ``kernel-quota`` mask at ``--sparsity`` (the first conv and the classifier left
dense, sparsegrain's default). Per encoding, every masked layer is written with ``encode_layer``
and read back with ``decode_layer`` (checked equal), and its bits are checked equal to
``storage.encode``'s count. MB/s are dense float32 megabytes (1e6 bytes) of the masked layers
per second; ``x st`` is the time over a safetensors ``save_file`` + ``load_file`` of the same
weights, each loaded tensor copied once so that every byte is read, as ``decode_layer`` reads
its section (best of 5, from the page cache: a floor for safetensors).

The last rows time the whole file: ``write_compressed`` + ``read_compressed`` of the state_dict
(each layer in storage.py's best encoding, the choice included; the wide ranks of layers that
share ``(G, n)`` computed together) against safetensors on the same state_dict. Every layer's
written bits equal its predicted bits; the file is ``ratio`` times ``predicted_bytes``
(sections are padded to whole bytes). One run; the machine may be noisy, so read the ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sparsegrain.analysis.storage import ENCODINGS, encode
from sparsegrain.core.tables import format_table
from sparsegrain.deploy.compressed import (
    decode_layer,
    encode_layer,
    read_compressed,
    write_compressed,
)
from sparsegrain.models import create_model
from sparsegrain.structures import parse_structure

SPEC = "kernel-quota"


def masked_resnet50(sparsity: float) -> tuple[dict[str, torch.Tensor], dict[str, str | None]]:
    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=1000, in_channels=3)
    st = parse_structure(SPEC)
    structures: dict[str, str | None] = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Conv2d) and name != "conv1":
                m.weight.mul_(st.mask(m.weight, sparsity))
                structures[name] = SPEC
    return model.state_dict(), structures


def safetensors_time(tensors: dict[str, torch.Tensor], path: Path) -> tuple[float, float]:
    """Best of 5 of (save, load) seconds."""
    best = (float("inf"), float("inf"))
    for _ in range(5):
        t0 = time.perf_counter()
        save_file(tensors, path)
        t1 = time.perf_counter()
        loaded = {k: t.clone() for k, t in load_file(path).items()}  # read every byte
        t2 = time.perf_counter()
        del loaded
        best = (min(best[0], t1 - t0), min(best[1], t2 - t1))
    return best


def per_encoding(layers: dict[str, torch.Tensor], st_w: float, st_r: float) -> list[list[str]]:
    mb = sum(4 * t.numel() for t in layers.values()) / 1e6
    rows = []
    for enc in ENCODINGS:
        written = predicted = 0
        t_w = t_r = 0.0
        for w in layers.values():
            t0 = time.perf_counter()
            out = encode_layer(w, SPEC, enc)
            t1 = time.perf_counter()
            back = decode_layer(out["data"], w.shape, SPEC, enc, out["counts"], nbits=out["bits"])
            t2 = time.perf_counter()
            t_w, t_r = t_w + t1 - t0, t_r + t2 - t1
            if not torch.equal(back, w):
                raise SystemExit(f"{enc}: a layer did not read back bit-exact")
            written += out["bits"]
            predicted += encode(w, SPEC)[enc].total
        rows.append(
            [
                enc,
                f"{written / 8 / 2**20:.2f}",
                "yes" if written == predicted else f"NO ({predicted} predicted)",
                f"{mb / t_w:.0f}",
                f"{mb / t_r:.0f}",
                f"{t_w / st_w:.1f}",
                f"{t_r / st_r:.1f}",
                f"{(t_w + t_r) / (st_w + st_r):.1f}",
            ]
        )
    rows.append(["safetensors", f"{mb / 2**20 * 1e6:.2f}", "-", f"{mb / st_w:.0f}"])
    rows[-1] += [f"{mb / st_r:.0f}", "1.0", "1.0", "1.0"]
    return rows


def whole_file(sd, structures, tmp: Path) -> list[str]:
    t0 = time.perf_counter()
    info = write_compressed(sd, structures, tmp / "model.sgc")
    t1 = time.perf_counter()
    back, _ = read_compressed(tmp / "model.sgc")
    t2 = time.perf_counter()
    for k, t in sd.items():
        if not torch.equal(back[k], t):
            raise SystemExit(f"whole file: {k} did not read back")
    st_w, st_r = safetensors_time(sd, tmp / "model.safetensors")
    mb = sum(t.numel() * t.element_size() for t in sd.values()) / 1e6
    exact = all(r["written_bits"] == r["predicted_bits"] for r in info["layers"])
    size = f"{info['file_bytes'] / 2**20:.2f}"
    return [
        "file (best per layer)",
        size,
        f"yes, file {info['ratio']:.5f}x predicted" if exact else "NO",
        f"{mb / (t1 - t0):.0f}",
        f"{mb / (t2 - t1):.0f}",
        f"{(t1 - t0) / st_w:.1f}",
        f"{(t2 - t1) / st_r:.1f}",
        f"{(t2 - t0) / (st_w + st_r):.1f}",
    ], [
        "file safetensors",
        f"{(tmp / 'model.safetensors').stat().st_size / 2**20:.2f}",
        "-",
        f"{mb / st_w:.0f}",
        f"{mb / st_r:.0f}",
        "1.0",
        "1.0",
        "1.0",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--sparsity", type=float, default=0.5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sd, structures = masked_resnet50(args.sparsity)
    layers = {f"{name}.weight": sd[f"{name}.weight"] for name in structures}
    with tempfile.TemporaryDirectory() as tmp:
        st_w, st_r = safetensors_time(layers, Path(tmp) / "layers.safetensors")
        rows = per_encoding(layers, st_w, st_r)
        rows += list(whole_file(sd, structures, Path(tmp)))
    n = sum(t.numel() for t in layers.values())
    print(
        f"resnet50, {len(layers)} convs {SPEC} {args.sparsity:.0%} ({n / 1e6:.1f}M weights), "
        f"torch threads {torch.get_num_threads()}"
    )
    head = ["encoding", "MiB", "= storage.py", "write MB/s", "read MB/s"]
    head += ["write x st", "read x st", "w+r x st"]
    print(format_table(rows, head))


if __name__ == "__main__":
    main()
