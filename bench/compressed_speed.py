"""Write and read speed of the compressed format per encoding on ResNet-50, beside a plain
safetensors save + load of the same tensors, with every size checked against storage.py.

Reproduce (CPU; about a minute):

    .venv/bin/python bench/compressed_speed.py [--threads 1] [--sparsity 0.5]
    .venv/bin/python bench/compressed_speed.py --families all --rounds 3

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
share ``(G, n)`` computed together), in format version 2 (split ranks) and version 1 (colex
ranks, the code before version 2), best of ``--rounds``, against safetensors on the same
state_dict. ``write_compressed`` is durable (fsync of the file and its directory before it
returns); ``save_file`` is not, so safetensors is timed both ways: the ``x st`` columns divide
by the plain save and load, the last column (``w+r x st+fsync``) by a save followed by an fsync
of the file, and the same load. Every layer's written bits equal its predicted bits; the file is
``ratio`` times ``predicted_bytes`` (sections are padded to whole bytes). One run; the machine
may be noisy, so read the ratios.

``--families all`` (or a comma-separated list) times whole files of torchvision models instead
(random init, 1000 classes; needs the ``models`` extra): every conv and linear but the first
conv and the classifier given a ``kernel-quota`` mask (depthwise convs, one kernel per filter,
stay dense; a linear's kernels are single weights, so its domains are rows of
``in_features`` groups), version 2, best of ``--rounds``, checked bit-exact and equal to the
predicted sizes; ``ns / weight`` is write + read over the masked weights.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

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


def masked(model: nn.Module, sparsity: float):
    """``model`` with every conv and linear but the first and the last (the first conv and the
    classifier, left dense as sparsegrain does by default) given a ``kernel-quota`` mask; a
    linear's kernels are its single weights, and depthwise convs (one kernel per filter) stay
    dense. The state_dict, the structures and the masked weights' count."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    st, structures, count = parse_structure(SPEC), {}, 0
    with torch.no_grad():
        for layer, m in layers[1:-1]:
            if m.weight.shape[1] == 1:
                continue
            m.weight.mul_(st.mask(m.weight, sparsity))
            structures[layer] = SPEC
            count += m.weight.numel()
    return model.state_dict(), structures, count


def masked_resnet50(sparsity: float) -> tuple[dict[str, torch.Tensor], dict[str, str | None]]:
    torch.manual_seed(0)
    sd, structures, _ = masked(create_model("resnet50", num_classes=1000, in_channels=3), sparsity)
    return sd, structures


def safetensors_time(
    tensors: dict[str, torch.Tensor], path: Path, rounds: int = 5
) -> tuple[float, float, float]:
    """Best of ``rounds`` of (save, save + fsync, load) seconds."""
    best = [float("inf")] * 3
    for _ in range(rounds):
        path.unlink(missing_ok=True)  # a new file each time, as the compressed rounds write
        t0 = time.perf_counter()
        save_file(tensors, path)
        t1 = time.perf_counter()
        path.unlink()
        save_file(tensors, path)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        t2 = time.perf_counter()
        loaded = {k: t.clone() for k, t in load_file(path).items()}  # read every byte
        t3 = time.perf_counter()
        del loaded
        best = [min(b, t) for b, t in zip(best, (t1 - t0, t2 - t1, t3 - t2))]
    return best[0], best[1], best[2]


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


def time_file(sd, structures, path: Path, rounds: int, version: int = 2):
    """Best of ``rounds`` of (write, read) seconds of the whole file, every round a new file;
    the written file's info; raises if a tensor does not read back."""
    t_w = t_r = float("inf")
    for _ in range(rounds):
        path.unlink(missing_ok=True)  # every round writes a new file, as a first save does
        t0 = time.perf_counter()
        info = write_compressed(sd, structures, path, version=version)
        t1 = time.perf_counter()
        back, _ = read_compressed(path)
        t2 = time.perf_counter()
        t_w, t_r = min(t_w, t1 - t0), min(t_r, t2 - t1)
    for k, t in sd.items():
        if not torch.equal(back[k], t):
            raise SystemExit(f"{path.name}: {k} did not read back")
    return t_w, t_r, info


def exact(info) -> bool:
    return all(r["written_bits"] == r["predicted_bits"] for r in info["layers"])


def whole_file(sd, structures, tmp: Path, rounds: int) -> list[list[str]]:
    st_w, st_wf, st_r = safetensors_time(sd, tmp / "model.safetensors", max(rounds, 5))
    mb = sum(t.numel() * t.element_size() for t in sd.values()) / 1e6
    rows = []
    for version in (2, 1):
        t_w, t_r, info = time_file(sd, structures, tmp / f"model_v{version}.sgc", rounds, version)
        rows.append(
            [
                f"file v{version} (best per layer)",
                f"{info['file_bytes'] / 2**20:.2f}",
                f"yes, file {info['ratio']:.5f}x predicted" if exact(info) else "NO",
                f"{mb / t_w:.0f}",
                f"{mb / t_r:.0f}",
                f"{t_w / st_w:.1f}",
                f"{t_r / st_r:.1f}",
                f"{(t_w + t_r) / (st_w + st_r):.1f}",
                f"{(t_w + t_r) / (st_wf + st_r):.1f}",
            ]
        )
    size = f"{(tmp / 'model.safetensors').stat().st_size / 2**20:.2f}"
    rows.append(["file safetensors", size, "-", f"{mb / st_w:.0f}", f"{mb / st_r:.0f}"])
    rows[-1] += ["1.0", "1.0", "1.0", f"{(st_w + st_r) / (st_wf + st_r):.1f}"]
    rows.append(["file safetensors + fsync", size, "-", f"{mb / st_wf:.0f}", f"{mb / st_r:.0f}"])
    rows[-1] += [f"{st_wf / st_w:.1f}", "1.0", f"{(st_wf + st_r) / (st_w + st_r):.1f}", "1.0"]
    return rows


FAMILIES = (
    "resnet50",
    "mobilenet_v2",
    "efficientnet_b0",
    "convnext_tiny",
    "regnet_y_400mf",
    "densenet121",
    "vit_b_16",
)


def masked_torchvision(name: str, sparsity: float):
    """A torchvision model (random init), masked as ``masked`` does."""
    from sparsegrain.models.external import import_torchvision

    torch.manual_seed(0)
    return masked(getattr(import_torchvision().models, name)(), sparsity)


def families(names: list[str], sparsity: float, tmp: Path, rounds: int) -> list[list[str]]:
    rows = []
    for name in names:
        sd, structures, count = masked_torchvision(name, sparsity)
        st_w, st_wf, st_r = safetensors_time(sd, tmp / "model.safetensors", max(rounds, 3))
        t_w, t_r, info = time_file(sd, structures, tmp / "model.sgc", rounds)
        st_bytes = (tmp / "model.safetensors").stat().st_size
        rows.append(
            [
                name,
                str(len(structures)),
                f"{count / 1e6:.1f}M",
                f"{info['file_bytes'] / 2**20:.1f} / {st_bytes / 2**20:.1f}",
                "yes" if exact(info) else "NO",
                f"{t_w * 1e3:.0f}",
                f"{t_r * 1e3:.0f}",
                f"{(t_w + t_r) / count * 1e9:.1f}",
                f"{(t_w + t_r) / (st_w + st_r):.1f}",
                f"{(t_w + t_r) / (st_wf + st_r):.1f}",
            ]
        )
    return rows


FAMILY_HEAD = ["model", "masked layers", "weights", "MiB: file / st", "= storage.py"]
FAMILY_HEAD += ["write ms", "read ms", "ns / weight", "w+r x st", "w+r x st+fsync"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=3, help="whole file: best of this many")
    ap.add_argument(
        "--families",
        default="",
        help=f"comma-separated torchvision models (or 'all': {','.join(FAMILIES)}): whole files "
        "of each instead of the ResNet-50 tables",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.families:
        names = list(FAMILIES) if args.families == "all" else args.families.split(",")
        with tempfile.TemporaryDirectory() as tmp:
            rows = families(names, args.sparsity, Path(tmp), args.rounds)
        print(
            f"torchvision models, {SPEC} {args.sparsity:.0%}, whole files (version 2) best of "
            f"{args.rounds}, torch threads {torch.get_num_threads()}"
        )
        print(format_table(rows, FAMILY_HEAD))
        return
    sd, structures = masked_resnet50(args.sparsity)
    layers = {f"{name}.weight": sd[f"{name}.weight"] for name in structures}
    with tempfile.TemporaryDirectory() as tmp:
        st_w, _, st_r = safetensors_time(layers, Path(tmp) / "layers.safetensors")
        rows = per_encoding(layers, st_w, st_r)
        files = whole_file(sd, structures, Path(tmp), args.rounds)
    n = sum(t.numel() for t in layers.values())
    print(
        f"resnet50, {len(layers)} convs {SPEC} {args.sparsity:.0%} ({n / 1e6:.1f}M weights), "
        f"torch threads {torch.get_num_threads()}"
    )
    head = ["encoding", "MiB", "= storage.py", "write MB/s", "read MB/s"]
    head += ["write x st", "read x st", "w+r x st"]
    print(format_table(rows, head))
    print(f"\nwhole state_dict ({sum(t.numel() for t in sd.values()) / 1e6:.1f}M values)")
    print(format_table(files, head + ["w+r x st+fsync"]))


if __name__ == "__main__":
    main()
