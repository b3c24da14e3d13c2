"""Sparse execution on CPU: PyTorch CSR/BSR kernels, chosen per layer by measurement.

A Linear ``y = x W^T + b`` runs as ``y^T = W_sparse @ x^T (+ b)``: the weight ``(K, C)`` is the
sparse operand, as PyTorch's sparse-dense products want it on the left. A Conv2d (groups=1,
zero padding) runs by im2col (``layers.im2col``): the columns ``(C*R*S, N*L)`` are multiplied by
``W_sparse (K, C*R*S)``, giving ``(K, N*L)``, reshaped to ``(N, K, Ho, Wo)``. The results equal
the dense layer's up to float rounding (the sums run in another order). The modules are for
inference: no gradient flows to the sparse weight.

``to_sparse_kernels`` keeps a layer dense unless a sparse format measured faster on the example
input: CSR and BSR products are only worth it at high sparsity, and how high depends on the
shapes, the thread count and the machine, so it is measured, not assumed.
"""

from __future__ import annotations

import copy
import re
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ...core.tables import format_table
from .layers import candidates, conv_supported, im2col, set_module

FORMATS = ("csr", "bsr")
BLOCKS = ((16, 16), (8, 8), (4, 4), (2, 2))  # BSR block sizes tried by "bsr", largest first
MIN_BLOCK_FILL = 0.5  # "bsr" needs blocks at least half full (else it stores mostly zeros)
Timer = Callable[[nn.Module, tuple], float]  # seconds of one call module(*args)


# -- formats --------------------------------------------------------------------------------------


def _parse_format(fmt: str) -> tuple[str, tuple[int, int] | None]:
    """``"csr"``, ``"bsr"`` (block size chosen from the weight) or ``"bsr:4x4"``."""
    m = re.fullmatch(r"(csr|bsr)(?::(\d+)x(\d+))?", str(fmt).strip().lower())
    if m is None or (m.group(1) == "csr" and m.group(2)):
        raise ValueError(f"formats: unknown format {fmt!r}; choose from csr, bsr, bsr:B1xB2")
    block = (int(m.group(2)), int(m.group(3))) if m.group(2) else None
    if block is not None and min(block) < 1:
        raise ValueError(f"formats: block sizes must be >= 1, got {fmt!r}")
    return m.group(1), block


def block_fill(w2: Tensor, block: tuple[int, int]) -> float:
    """Non-zeros over the elements of the blocks that hold any: 1.0 for a block-sparse mask."""
    b1, b2 = block
    k, n = w2.shape
    nz = (w2 != 0).reshape(k // b1, b1, n // b2, b2)
    kept = int(nz.any(3).any(1).sum())
    return int(nz.sum()) / (kept * b1 * b2) if kept else 0.0


def choose_block(w2: Tensor) -> tuple[int, int] | None:
    """The largest of ``BLOCKS`` that divides the weight and whose blocks are at least
    ``MIN_BLOCK_FILL`` full, or None (a fine mask gains nothing from BSR)."""
    k, n = w2.shape
    for b in BLOCKS:
        if k % b[0] == 0 and n % b[1] == 0 and block_fill(w2, b) >= MIN_BLOCK_FILL:
            return b
    return None


def to_sparse(w2: Tensor, fmt: str) -> Tensor:
    """A 2-D weight in ``fmt`` (csr, bsr, bsr:B1xB2); ValueError when it cannot hold it."""
    kind, block = _parse_format(fmt)
    with warnings.catch_warnings():  # "sparse CSR support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        if kind == "csr":
            return w2.detach().to_sparse_csr()
        block = block or choose_block(w2)
        if block is None:
            raise ValueError("no block size of BLOCKS fits with blocks at least half full")
        if w2.shape[0] % block[0] or w2.shape[1] % block[1]:
            raise ValueError(f"block {block[0]}x{block[1]} does not divide {tuple(w2.shape)}")
        return w2.detach().to_sparse_bsr(block)


def _format_name(weight: Tensor) -> str:
    if weight.layout == torch.sparse_bsr:
        b1, b2 = weight.values().shape[-2:]
        return f"bsr:{b1}x{b2}"
    return "csr"


class _SparseMatmul(nn.Module):
    """Holds ``W_sparse (K, D)`` and an optional bias; ``_mm(cols (D, M)) -> (K, M)``."""

    def __init__(self, weight2d: Tensor, bias: Tensor | None, fmt: str):
        super().__init__()
        self.register_buffer("weight_sparse", to_sparse(weight2d, fmt), persistent=False)
        b = None if bias is None else bias.detach().reshape(-1, 1).clone()
        self.register_buffer("bias_column", b, persistent=False)
        self.format = _format_name(self.weight_sparse)

    def _mm(self, cols: Tensor) -> Tensor:
        if self.bias_column is None:
            return self.weight_sparse @ cols
        return torch.addmm(self.bias_column, self.weight_sparse, cols)

    def __deepcopy__(self, memo):  # sparse compressed tensors have no storage to deep-copy
        new = copy.copy(self)
        new._buffers = {k: None if v is None else v.clone() for k, v in self._buffers.items()}
        new._modules, new._parameters = dict(self._modules), dict(self._parameters)
        return new


class SparseLinear(_SparseMatmul):
    """``nn.Linear`` with the weight in CSR or BSR: ``y^T = W_sparse @ x^T + b``."""

    def __init__(self, linear: nn.Linear, fmt: str = "csr"):
        super().__init__(linear.weight, linear.bias, fmt)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = self._mm(x.reshape(-1, self.in_features).t())
        return y.t().reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, format={self.format}"


class SparseConv2d(_SparseMatmul):
    """``nn.Conv2d`` (groups=1, zero padding) by im2col and a sparse ``(K, C*R*S)`` weight."""

    def __init__(self, conv: nn.Conv2d, fmt: str = "csr"):
        reason = conv_supported(conv)
        if reason is not None:
            raise ValueError(f"SparseConv2d cannot run this layer: {reason}")
        super().__init__(conv.weight.reshape(conv.out_channels, -1), conv.bias, fmt)
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding = (0, 0) if isinstance(conv.padding, str) else conv.padding

    def forward(self, x: Tensor) -> Tensor:
        batched = x.dim() == 4
        cols, n, ho, wo = im2col(x if batched else x.unsqueeze(0), self)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], n * ho * wo)  # (C*R*S, N*L)
        y = self._mm(cols).reshape(self.out_channels, n, ho, wo).transpose(0, 1).contiguous()
        return y if batched else y.squeeze(0)

    def extra_repr(self) -> str:
        return (
            f"out_channels={self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, format={self.format}"
        )


def sparse_module(module: nn.Module, fmt: str = "csr") -> nn.Module:
    """The sparse-execution twin of a Linear or Conv2d in format ``fmt``."""
    if isinstance(module, nn.Linear):
        return SparseLinear(module, fmt)
    if isinstance(module, nn.Conv2d):
        return SparseConv2d(module, fmt)
    raise ValueError(f"no sparse kernel for {type(module).__name__} (Linear and Conv2d only)")


# -- measured choice ------------------------------------------------------------------------------


@torch.inference_mode()
def time_call(module: nn.Module, args: tuple) -> float:
    """Seconds of one call ``module(*args)``."""
    start = time.perf_counter()
    module(*args)
    return time.perf_counter() - start


def time_modules(modules: Sequence[nn.Module], args: tuple, repeats: int, timer: Timer) -> list:
    """Per module, the fastest of ``repeats`` calls, after one warm-up call each.

    Calls are interleaved (one of each module per round) so that a change in machine load hits
    every candidate alike, and the minimum is kept: other work on the machine only ever adds
    time, so the fastest call is the best estimate of the layer's own cost.
    """
    for module in modules:
        timer(module, args)
    best = [float("inf")] * len(modules)
    for _ in range(repeats):
        for i, module in enumerate(modules):
            best[i] = min(best[i], timer(module, args))
    return best


def _close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= 1e-4 * (1 + b.abs().max()))


@torch.no_grad()
def _capture_inputs(model: nn.Module, example_input, names: set[str]) -> dict[str, tuple]:
    """The positional inputs of each named module's first call in one eval-mode forward pass."""
    seen: dict[str, tuple] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, args, n=n: seen.setdefault(n, args))
        for n, m in model.named_modules()
        if n in names
    ]
    was_training = model.training
    model.eval()  # no BN statistics updated by the capture
    try:
        args = example_input if isinstance(example_input, tuple) else (example_input,)
        model(*args)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def _measure(name, module, args, formats, min_sparsity, repeats, timer) -> dict:
    w = module.weight.detach()
    sparsity = float((w == 0).sum()) / w.numel()
    row = {"name": name, "kind": type(module).__name__, "shape": list(w.shape)}
    row.update(sparsity=sparsity, dense_s=None, times={}, best=None, sparse_s=None)
    row.update(chosen="dense", speedup=None, note="")
    reason = conv_supported(module) if isinstance(module, nn.Conv2d) else None
    if reason is None and sparsity < min_sparsity:
        reason = f"sparsity {sparsity:.3f} below min_sparsity {min_sparsity}"
    if reason is None and args is None:
        reason = "not run by the example input"
    if reason is not None:
        row["note"] = reason
        return row
    with torch.no_grad():
        ref = module(*args)
    notes, cands = [], []
    for fmt in formats:
        try:
            cand = sparse_module(module, fmt)
        except (ValueError, RuntimeError) as e:
            notes.append(f"{fmt}: {e}")
            continue
        with torch.no_grad():
            if _close(cand(*args), ref):
                cands.append(cand)
            else:
                notes.append(f"{cand.format}: output differs from dense, not used")
    dense_s, *times = time_modules([module, *cands], args, repeats, timer)
    row["dense_s"], row["times"] = dense_s, {c.format: t for c, t in zip(cands, times)}
    if cands:
        best = min(range(len(cands)), key=times.__getitem__)
        row.update(best=cands[best].format, sparse_s=times[best])
        row["speedup"] = dense_s / times[best] if times[best] else float("inf")
        if times[best] < dense_s:
            row.update(chosen=cands[best].format, module=cands[best])
        else:
            notes.append(f"{cands[best].format} slower than dense")
    row["note"] = "; ".join(notes)
    return row


def to_sparse_kernels(
    model: nn.Module,
    example_input: Tensor | tuple,
    min_sparsity: float = 0.7,
    formats: Sequence[str] = FORMATS,
    repeats: int = 10,
    *,
    timer: Timer | None = None,
) -> tuple[nn.Module, dict]:
    """A copy of ``model`` in which each Linear/Conv2d of at least ``min_sparsity`` runs on a
    sparse kernel, if one measured faster than the dense layer on its input from
    ``example_input``; the original model is left as it is.

    For every candidate the dense layer and each format of ``formats`` (``csr``, ``bsr`` with the
    block size from ``choose_block``, or ``bsr:B1xB2``) is timed by ``time_modules``: the
    fastest of ``repeats`` interleaved calls, each timed by ``timer(module, args)`` (default
    ``time_call``), once the sparse output is checked equal to the dense one; a layer is
    replaced only when its best sparse time is below its dense time. Report: ``layers`` (per
    layer ``name``, ``kind``, ``shape``, ``sparsity``, ``dense_s``, ``times`` per format,
    ``best``, ``sparse_s``, ``speedup``, ``chosen`` ("dense" or the format), ``note``),
    ``replaced`` (names), ``repeats``, ``threads``.
    """
    if not 0.0 <= float(min_sparsity) <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(formats, str):
        formats = (formats,)
    for fmt in formats:
        _parse_format(fmt)
    model = copy.deepcopy(model)
    cands = candidates(model)
    inputs = _capture_inputs(model, example_input, {n for n, _ in cands})
    rows = []
    for name, module in cands:
        row = _measure(
            name, module, inputs.get(name), formats, min_sparsity, repeats, timer or time_call
        )
        if "module" in row:
            set_module(model, name, row.pop("module"))
        rows.append(row)
    replaced = [r["name"] for r in rows if r["chosen"] != "dense"]
    report = {"layers": rows, "replaced": replaced, "repeats": repeats}
    report["threads"] = torch.get_num_threads()
    return model, report


def format_kernel_report(report: dict) -> str:
    """One line per layer: sparsity, dense and best sparse time (ms), speedup, choice."""

    def ms(x):
        return "-" if x is None else f"{x * 1e3:.3f}"

    head = ["layer", "kind", "sparsity", "dense ms", "best", "sparse ms", "speedup", "chosen"]
    rows = [
        [r["name"], r["kind"], f"{r['sparsity']:.3f}", ms(r["dense_s"]), r["best"] or "-"]
        + [ms(r["sparse_s"]), f"{r['speedup']:.2f}" if r["speedup"] else "-", r["chosen"]]
        for r in report["layers"]
    ]
    foot = f"fastest of {report['repeats']} interleaved calls, {report['threads']} threads"
    return format_table(rows, head) + "\n" + foot
