"""Layer geometry from one forward pass, and dense vs effective multiply-accumulates (MACs).

Everything here counts MACs per example (one multiply and one add each; FLOPs = 2 x MACs); bias
adds, normalisation and activations are not counted. A weight is ``(K, C/g, R, S)`` (``shape_4d``:
Linear ``(K, C)`` is ``(K, C, 1, 1)``, Conv1d ``(K, C, S)`` is ``(K, C, 1, S)``) with ``g`` the
conv groups; the output plane is ``Ho x Wo``. Then:

- ``dense = K * (C/g) * R * S * Ho * Wo`` (= ``weight.numel() * Ho * Wo``);
- ``effective = nnz(weight) * Ho * Wo``: zero weights skipped; every tap is counted, including
  those that fall on zero padding (hardware that does not skip padding does them);
- ``dense_valid`` / ``effective_valid``: exact counts that also skip taps on zero padding. Kernel
  row ``r`` meets the input at ``rows[r] = #{ho < Ho : 0 <= ho*stride_h - pad_top + r*dil_h < H}``
  output rows (``cols[s]`` likewise), so ``effective_valid = sum over non-zero W[k,c,r,s] of
  rows[r] * cols[s]``. With a padding mode other than zeros every tap reads real data and the
  valid counts equal the plain ones.

A Linear layer applied to ``(N, ..., C)`` has ``H = 1`` and ``W`` = the product of the middle
dims (positions); Conv1d ``(N, C, L)`` has ``H = 1``, ``W = L``.

Work done by functional calls is counted too (``profiling``): a parameter used as a weight by
``F.linear``, ``F.conv1d`` / ``F.conv2d``, ``addmm`` or a matmul (``nn.MultiheadAttention``'s
``in_proj_weight`` and ``out_proj``, Hugging Face's ``Conv1D``, a module's own weights) is a
layer row like any other, with ``W`` = rows of the call per example; products of two
activations (attention scores, ``attn @ v``, ``scaled_dot_product_attention``, ``einsum``) are
``functional`` rows, one per module and op, that no weight sparsity reduces (a causal mask is
not skipped either). The totals count both, so a model rebuilt with fewer heads or neurons
counts fewer MACs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..core.tables import format_table
from ..sparsity.masking import candidate_layers
from ..structures import as_4d, shape_4d
from .profiling import (
    FunctionalOp,
    LayerGeometry,
    Recorder,
    conv_padding,
    density,
    pair,
    plane,
    weight_tensors,
)

__all__ = [
    "FunctionalOp",
    "LayerGeometry",
    "Profile",
    "flops",
    "format_flops",
    "layer_weights",
    "model_flops",
    "profile",
    "valid_taps",
]

KEYS = ("dense", "effective", "dense_valid", "effective_valid")


# -- profile --------------------------------------------------------------------------------------


class Profile(list):
    """``profile``'s result: a list of the ``LayerGeometry`` of every Conv1d / Conv2d / Linear
    that ran (called as a module or through its weight), in call order, as callers that look at
    layers (the accelerator model) expect, and beside it:

    - ``extra``: geometries of the other parameters used as weights (``nn.MultiheadAttention``'s
      ``in_proj_weight``, a module's own ``F.linear`` / ``F.conv2d`` / matmul weight);
    - ``weights``: the tensor each of ``extra`` used during the pass (masks applied), used by
      ``model_flops`` where its ``weights`` argument lacks the name;
    - ``functional``: ``FunctionalOp`` products between activations (attention, matmuls);
    - ``order``: every geometry name in call order; ``notes``: calls that were not counted.
    """

    def __init__(self, layers=(), extra=(), weights=None, functional=(), order=(), notes=()):
        super().__init__(layers)
        self.extra: list[LayerGeometry] = list(extra)
        self.weights: dict[str, Tensor] = dict(weights or {})
        self.functional: list[FunctionalOp] = list(functional)
        self.order: tuple[str, ...] = tuple(order)
        self.notes: list[str] = list(notes)


def _batch(example) -> int:
    """Dim 0 of the first input tensor: the number of examples MACs are divided by."""
    items = list(example.values()) if isinstance(example, dict) else example
    if isinstance(items, (tuple, list)):
        return next((n for n in map(_batch, items) if n), 0)
    if isinstance(items, Tensor):
        return int(items.shape[0]) if items.dim() else 1
    return 0


def profile(model: nn.Module, example_input) -> Profile:
    """Run ``model`` once on ``example_input`` (eval mode, no grad; the mode is restored) and
    return the geometry of every Conv1d / Conv2d / Linear, in call order, with the weights and
    activation products of functional calls beside it (``Profile``). ``example_input`` is a
    tensor or a tuple of positional arguments; the model's output may be anything (a tensor, a
    tuple, a ``ModelOutput``): it is not read."""
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    candidates = dict(candidate_layers(model))
    handles = []
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), parametrize.cached():
            rec = Recorder(model, _batch(args) or 1, candidates)
            handles = _hooks(model, rec, candidates)
            with rec:
                model(*args)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    geoms, ops, notes = rec.results()
    layers = [g for g in geoms if g.name in candidates]
    extra = [g for g in geoms if g.name not in candidates]
    order = [g.name for g in geoms]
    return Profile(layers, extra, rec.tensors, ops, order, notes)


def _hooks(model: nn.Module, rec: Recorder, candidates: dict[str, nn.Module]) -> list:
    def layer_hook(name: str):
        def hook(m, inputs, kwargs, output):
            x = (inputs[0] if inputs else next(iter(kwargs.values()))).detach()
            y = output.detach()
            rec.add_geometry(name, lambda: module_geometry(name, m, x, y))

        return hook

    handles = []
    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda m, a, name=name: rec.enter(name)))
        if name in candidates:
            handles.append(m.register_forward_hook(layer_hook(name), with_kwargs=True))
        handles.append(m.register_forward_hook(lambda m, a, y: rec.leave(), always_call=True))
    return handles


def module_geometry(name: str, m: nn.Module, x: Tensor, y: Tensor) -> LayerGeometry:
    """The geometry of a Conv1d / Conv2d / Linear (or Conv1D) module's call on ``x`` -> ``y``."""
    kind = (
        "conv1d" if isinstance(m, nn.Conv1d) else "conv2d" if isinstance(m, nn.Conv2d) else "linear"
    )
    if kind == "linear":
        shapes = (tuple(m.weight.shape), plane(x, kind), plane(y, kind))
        return LayerGeometry(name, kind, *shapes, act_density=density(x))
    dil = pair(m.dilation, 1)
    return LayerGeometry(
        name=name,
        kind=kind,
        weight_shape=tuple(m.weight.shape),
        in_shape=plane(x, kind),
        out_shape=plane(y, kind),
        stride=pair(m.stride, 1),
        padding=conv_padding(m.padding, pair(m.kernel_size, 1), dil),
        dilation=dil,
        groups=int(m.groups),
        act_density=density(x),
        padding_mode=getattr(m, "padding_mode", "zeros"),
    )


def layer_weights(model: nn.Module) -> dict[str, Tensor]:
    """``{name: weight}`` of every Conv1d / Conv2d / Linear (masked weight when one is
    attached), then of every other parameter of 2+ dims, named as ``profile`` names the weights
    of functional calls (``attn.in_proj_weight``; a ``Conv1D``'s ``weight`` by its module)."""
    out = {n: m.weight.detach() for n, m in candidate_layers(model)}
    for name, t in weight_tensors(model).items():
        out.setdefault(name, t.detach())
    return out


# -- counting -------------------------------------------------------------------------------------


def valid_taps(geom: LayerGeometry) -> tuple[list[int], list[int]]:
    """``(rows, cols)``: for each kernel row ``r`` (column ``s``), how many output rows (columns)
    read a real input element through it, padding excluded (see the module doc)."""
    _, h, w = geom.in_shape
    _, ho, wo = geom.out_shape
    r, s = geom.kernel
    if geom.padding_mode != "zeros":
        return [ho] * r, [wo] * s

    def count(n_out: int, n_in: int, k: int, stride: int, pad: int, dil: int) -> list[int]:
        return [
            sum(1 for o in range(n_out) if 0 <= o * stride - pad + i * dil < n_in) for i in range(k)
        ]

    rows = count(ho, h, r, geom.stride[0], geom.padding[0], geom.dilation[0])
    cols = count(wo, w, s, geom.stride[1], geom.padding[1], geom.dilation[1])
    return rows, cols


def flops(geom: LayerGeometry, weight: Tensor) -> dict[str, int]:
    """MACs per example: ``dense``, ``effective`` (zero weights skipped), ``dense_valid`` and
    ``effective_valid`` (taps on zero padding skipped too). ``weight`` may be a bool mask."""
    want = shape_4d(geom.weight_shape)
    if shape_4d(weight.shape) != want:
        raise ValueError(
            f"weight does not match layer '{geom.name}'\n  expected: {tuple(geom.weight_shape)}\n"
            f"  got: {tuple(weight.shape)}"
        )
    _, ho, wo = geom.out_shape
    occ = as_4d(weight.detach() != 0).cpu()
    rows, cols = valid_taps(geom)
    taps = torch.tensor(rows, dtype=torch.int64)[:, None] * torch.tensor(cols)[None, :]  # (R, S)
    per_rs = occ.sum(dim=(0, 1), dtype=torch.int64)  # (R, S) non-zeros at each kernel position
    return {
        "dense": weight.numel() * ho * wo,
        "effective": int(occ.sum()) * ho * wo,
        "dense_valid": want[0] * want[1] * int(taps.sum()),
        "effective_valid": int((per_rs * taps).sum()),
    }


def _weight_of(name: str, weights: dict[str, Tensor], profiled: dict[str, Tensor]) -> Tensor:
    """``weights[name]``; a block ``base[r0:r1]`` of a weight in ``weights``; else the tensor
    the profile saw."""
    if name in weights:
        return weights[name]
    block = _BLOCK.match(name)
    if block and block[1] in weights:
        return weights[block[1]][int(block[2]) : int(block[3])]
    return profiled[name]


_BLOCK = re.compile(r"^(.*)\[(\d+):(\d+)\]$")


def model_flops(geoms: Sequence[LayerGeometry], weights: dict[str, Tensor]) -> dict:
    """Per-layer ``flops`` rows (with ``name`` and ``ratio = dense / effective``) and totals.

    With a ``Profile``, ``layers`` also holds the weights of its functional calls (in call
    order), looked up in ``weights`` and else taken as the profile saw them, and
    ``functional`` one row per module and op of products between activations (``name``,
    ``op``, ``calls``; dense = effective); ``total`` counts both, and ``notes`` lists the calls
    the profile did not count. Raises ValueError naming the layers of ``geoms`` that
    ``weights`` lacks.
    """
    missing = [g.name for g in geoms if g.name not in weights]
    if missing:
        raise ValueError(f"weights: no tensor for layers {missing}")
    profiled = getattr(geoms, "weights", {})
    rows = [{"name": g.name, **flops(g, weights[g.name])} for g in geoms]
    rows += [
        {"name": g.name, **flops(g, _weight_of(g.name, weights, profiled))}
        for g in getattr(geoms, "extra", ())
    ]
    position = {n: i for i, n in enumerate(getattr(geoms, "order", ()))}
    rows.sort(key=lambda r: position.get(r["name"], len(position)))
    ops = [
        {"name": op.name, "op": op.op, "calls": op.calls, **dict.fromkeys(KEYS, op.macs)}
        for op in getattr(geoms, "functional", ())
    ]
    total = {k: sum(r[k] for r in [*rows, *ops]) for k in KEYS}
    for r in [*rows, *ops, total]:
        r["ratio"] = r["dense"] / r["effective"] if r["effective"] else math.inf
    notes = list(getattr(geoms, "notes", ()))
    return {"layers": rows, "functional": ops, "total": total, "notes": notes}


def format_flops(result: dict) -> str:
    """A table of ``model_flops``'s result in millions of MACs: one line per layer, one per
    module and op of activation products (``name [op]``), the total, then any notes."""
    head = ["layer", "dense MMAC", "effective MMAC", "valid MMAC", "dense/effective"]

    def line(name: str, r: dict) -> list[str]:
        m = [f"{r[k] / 1e6:.3f}" for k in ("dense", "effective", "effective_valid")]
        return [name, *m, f"{r['ratio']:.2f}"]

    rows = [line(r["name"], r) for r in result["layers"]]
    rows += [line(f"{r['name'] or '(model)'} [{r['op']}]", r) for r in result.get("functional", [])]
    rows.append(line("total", result["total"]))
    notes = "".join(f"\nnot counted: {n}" for n in result.get("notes", []))
    return format_table(rows, head) + "\nMACs per example (FLOPs = 2 x MACs)" + notes
