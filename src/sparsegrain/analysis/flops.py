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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.tables import format_table
from ..sparsity.masking import candidate_layers
from ..structures import as_4d, shape_4d

Pair = tuple[int, int]


@dataclass(frozen=True)
class LayerGeometry:
    """One Conv1d / Conv2d / Linear call, per example: shapes, conv parameters, input density.

    ``in_shape`` ``(C, H, W)`` and ``out_shape`` ``(K, Ho, Wo)``; ``stride``, ``padding``
    (top, left: the amount before the input; PyTorch's ``"same"`` puts the smaller half first),
    ``dilation`` as ``(h, w)`` pairs; ``act_density`` = non-zero fraction of the layer's input
    activations over the whole example batch (padding not included). A module called more than
    once is profiled at its first call; ``calls`` says how often it ran.
    """

    name: str
    kind: str  # "conv1d" | "conv2d" | "linear"
    weight_shape: tuple[int, ...]
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    act_density: float = 1.0
    padding_mode: str = "zeros"
    calls: int = 1

    @property
    def kernel(self) -> Pair:
        _, _, r, s = shape_4d(self.weight_shape)
        return (r, s)


# -- profile --------------------------------------------------------------------------------------


def _pair(v, fill: int) -> Pair:
    """Conv1d's ``(x,)`` -> ``(fill, x)``; Conv2d's ``(a, b)`` as is."""
    v = tuple(v)
    return (fill, int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


def _plane(x: Tensor, kind: str) -> tuple[int, int, int]:
    """Per-example ``(C, H, W)`` of a layer's input or output tensor."""
    if kind == "linear":
        positions = math.prod(x.shape[1:-1]) if x.dim() >= 2 else 1
        return (int(x.shape[-1]), 1, int(positions))
    if kind == "conv1d":
        return (int(x.shape[-2]), 1, int(x.shape[-1]))
    return tuple(int(d) for d in x.shape[-3:])  # type: ignore[return-value]


def _padding(m: nn.Module, kind: str) -> Pair:
    if kind == "linear":
        return (0, 0)
    if isinstance(m.padding, str):  # "valid" or "same"
        if m.padding == "valid":
            return (0, 0)
        k, d = _pair(m.kernel_size, 1), _pair(m.dilation, 1)
        return (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
    return _pair(m.padding, 0)


def _geometry(name: str, m: nn.Module, x: Tensor, y: Tensor) -> LayerGeometry:
    kind = (
        "conv1d" if isinstance(m, nn.Conv1d) else "conv2d" if isinstance(m, nn.Conv2d) else "linear"
    )
    conv = kind != "linear"
    return LayerGeometry(
        name=name,
        kind=kind,
        weight_shape=tuple(m.weight.shape),
        in_shape=_plane(x, kind),
        out_shape=_plane(y, kind),
        stride=_pair(m.stride, 1) if conv else (1, 1),
        padding=_padding(m, kind),
        dilation=_pair(m.dilation, 1) if conv else (1, 1),
        groups=int(m.groups) if conv else 1,
        act_density=float(torch.count_nonzero(x)) / x.numel() if x.numel() else 0.0,
        padding_mode=getattr(m, "padding_mode", "zeros") if conv else "zeros",
    )


def profile(model: nn.Module, example_input) -> list[LayerGeometry]:
    """Run ``model(example_input)`` once (eval mode, no grad; the mode is restored) and return
    the geometry of every Conv1d / Conv2d / Linear, in call order. ``example_input`` is a tensor
    or a tuple of positional arguments."""
    seen: dict[str, LayerGeometry] = {}
    calls: dict[str, int] = {}

    def hook_for(name: str):
        def hook(m, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if name not in seen:
                seen[name] = _geometry(name, m, inputs[0].detach(), output.detach())

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in candidate_layers(model)]
    was_training = model.training
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    try:
        model.eval()
        with torch.no_grad():
            model(*args)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [_with_calls(g, calls[n]) for n, g in seen.items()]


def _with_calls(g: LayerGeometry, calls: int) -> LayerGeometry:
    return g if calls == 1 else LayerGeometry(**{**g.__dict__, "calls": calls})


def layer_weights(model: nn.Module) -> dict[str, Tensor]:
    """``{name: weight}`` of every Conv1d / Conv2d / Linear (masked weight when one is attached)."""
    return {n: m.weight.detach() for n, m in candidate_layers(model)}


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


def model_flops(geoms: Sequence[LayerGeometry], weights: dict[str, Tensor]) -> dict:
    """Per-layer ``flops`` rows (with ``name`` and ``ratio = dense / effective``) and totals.

    Raises ValueError naming the layers of ``geoms`` that ``weights`` lacks.
    """
    missing = [g.name for g in geoms if g.name not in weights]
    if missing:
        raise ValueError(f"weights: no tensor for layers {missing}")
    rows = [{"name": g.name, **flops(g, weights[g.name])} for g in geoms]
    keys = ("dense", "effective", "dense_valid", "effective_valid")
    total = {k: sum(r[k] for r in rows) for k in keys}
    for r in [*rows, total]:
        r["ratio"] = r["dense"] / r["effective"] if r["effective"] else math.inf
    return {"layers": rows, "total": total}


def format_flops(result: dict) -> str:
    """A table of ``model_flops``'s result in millions of MACs."""
    head = ["layer", "dense MMAC", "effective MMAC", "valid MMAC", "dense/effective"]

    def line(name: str, r: dict) -> list[str]:
        m = [f"{r[k] / 1e6:.3f}" for k in ("dense", "effective", "effective_valid")]
        return [name, *m, f"{r['ratio']:.2f}"]

    rows = [line(r["name"], r) for r in result["layers"]] + [line("total", result["total"])]
    return format_table(rows, head) + "\nMACs per example (FLOPs = 2 x MACs)"
