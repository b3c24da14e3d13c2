"""Sparse execution: PyTorch CSR/BSR kernels on CPU, chosen per layer by measurement, and 2:4
semi-structured kernels on NVIDIA GPUs.

A Linear ``y = x W^T + b`` runs as ``y^T = W_sparse @ x^T (+ b)``: the weight ``(K, C)`` is the
sparse operand, as PyTorch's sparse-dense products want it on the left. A Conv2d (groups=1,
zero padding) runs by im2col: ``unfold`` turns the input ``(N, C, H, W)`` into columns
``(C*R*S, N*L)`` (rows in ``(c, r, s)`` order, the order of the ``(K, C*R*S)`` GEMM view every
structure uses), then ``W_sparse (K, C*R*S) @ columns`` gives ``(K, N*L)``, reshaped to
``(N, K, Ho, Wo)``. The results equal the dense layer's up to float rounding (the sums run in
another order). The modules are for inference: no gradient flows to the sparse weight.

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
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.tables import format_table

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


def conv_supported(conv: nn.Module) -> str | None:
    """None if ``SparseConv2d`` (im2col) can run ``conv``, else the reason it cannot."""
    if not isinstance(conv, nn.Conv2d):
        return f"{type(conv).__name__} is not a Conv2d"
    if conv.groups != 1:
        return f"groups={conv.groups} (im2col path needs groups=1)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (needs 'zeros')"
    if isinstance(conv.padding, str) and conv.padding != "valid":
        return f"padding={conv.padding!r} (needs explicit padding or 'valid')"
    return None


def im2col(x: Tensor, conv) -> tuple[Tensor, int, int, int]:
    """``F.unfold`` of a (N, C, H, W) batch with ``conv``'s kernel_size/stride/padding/dilation:
    columns (N, C*R*S, Ho*Wo) and N, Ho, Wo."""
    n, _, h, w = x.shape
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    (ph, pw), (dh, dw) = conv.padding, conv.dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    return cols, n, ho, wo


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


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and isinstance(m, (nn.Linear, nn.Conv2d))]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


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
    cands = _candidates(model)
    inputs = _capture_inputs(model, example_input, {n for n, _ in cands})
    rows = []
    for name, module in cands:
        row = _measure(
            name, module, inputs.get(name), formats, min_sparsity, repeats, timer or time_call
        )
        if "module" in row:
            _set_module(model, name, row.pop("module"))
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


# -- 2:4 on NVIDIA GPUs ---------------------------------------------------------------------------

SEMI_PAD = 64  # pad the (K, D) weight to multiples of 64: meets both backends' shape minimums


def is_2_4(w2: Tensor) -> bool:
    """True when every 4 consecutive weights along the input axis hold at most 2 non-zeros."""
    return w2.shape[1] % 4 == 0 and bool(((w2 != 0).reshape(w2.shape[0], -1, 4).sum(-1) <= 2).all())


class _SemiStructured(nn.Module):
    """``y = x @ W^T + b`` with ``W (K, D)`` as a ``torch.sparse`` semi-structured tensor.

    The weight is zero-padded to multiples of ``SEMI_PAD`` (zeros keep the 2:4 pattern), the
    input to the padded width; the product runs in ``dtype`` (float16 or bfloat16: the 2:4
    tensor-core formats) and comes back in the input's dtype.
    """

    def __init__(self, weight2d: Tensor, bias: Tensor | None, dtype: torch.dtype):
        super().__init__()
        k, d = weight2d.shape
        self.out_dim, self.in_dim, self.dtype = k, d, dtype
        kp, dp = -(-k // SEMI_PAD) * SEMI_PAD, -(-d // SEMI_PAD) * SEMI_PAD
        padded = F.pad(weight2d.detach().to(dtype), (0, dp - d, 0, kp - k)).contiguous()
        semi = torch.sparse.to_sparse_semi_structured(padded)
        self.weight_semi = nn.Parameter(semi, requires_grad=False)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def _linear(self, x2: Tensor) -> Tensor:
        pad = self.weight_semi.shape[1] - self.in_dim
        y = F.linear(F.pad(x2.to(self.dtype), (0, pad)), self.weight_semi)[:, : self.out_dim]
        y = y.to(x2.dtype)
        return y if self.bias is None else y + self.bias


class SemiStructuredLinear(_SemiStructured):
    """``nn.Linear`` with a 2:4 weight on sparse tensor cores."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.float16):
        super().__init__(linear.weight, linear.bias, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self._linear(x.reshape(-1, self.in_dim)).reshape(*x.shape[:-1], self.out_dim)


class SemiStructuredConv2d(_SemiStructured):
    """``nn.Conv2d`` (groups=1, zero padding) by im2col with a 2:4 ``(K, C*R*S)`` weight."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype = torch.float16):
        reason = conv_supported(conv)
        if reason is not None:
            raise ValueError(f"SemiStructuredConv2d cannot run this layer: {reason}")
        super().__init__(conv.weight.reshape(conv.out_channels, -1), conv.bias, dtype)
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding = (0, 0) if isinstance(conv.padding, str) else conv.padding

    def forward(self, x: Tensor) -> Tensor:
        batched = x.dim() == 4
        cols, n, ho, wo = im2col(x if batched else x.unsqueeze(0), self)
        y = self._linear(cols.transpose(1, 2).reshape(n * ho * wo, self.in_dim))  # (N*L, K)
        y = y.reshape(n, ho * wo, self.out_dim).transpose(1, 2).reshape(n, -1, ho, wo)
        return y if batched else y.squeeze(0)


def to_semi_structured(
    model: nn.Module, dtype: torch.dtype = torch.float16
) -> tuple[nn.Module, dict]:
    """A copy of ``model`` (on a CUDA device) in which every Linear and Conv2d whose weight is
    2:4 along the input axis (``nm:2:4``) runs on PyTorch's semi-structured sparse tensors.

    Needs an NVIDIA GPU with sparse tensor cores (compute capability 8.0+); raises RuntimeError
    without CUDA. Report: ``layers`` (``name``, ``kind``, ``shape``, ``chosen``
    ("semi-structured" or "dense"), ``note``) and ``replaced``.
    """
    if not torch.cuda.is_available():
        raise RuntimeError(
            "to_semi_structured needs an NVIDIA GPU: torch.cuda.is_available() is False"
        )
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    model = copy.deepcopy(model)
    rows = []
    for name, module in _candidates(model):
        w2 = module.weight.detach().reshape(module.weight.shape[0], -1)
        row = {"name": name, "kind": type(module).__name__, "shape": list(module.weight.shape)}
        reason = conv_supported(module) if isinstance(module, nn.Conv2d) else None
        if reason is None and not w2.is_cuda:
            reason = "weight is not on a CUDA device (call model.cuda() first)"
        if reason is None and not is_2_4(w2):
            reason = "weight is not 2:4 along the input axis"
        if reason is None:
            cls = SemiStructuredLinear if isinstance(module, nn.Linear) else SemiStructuredConv2d
            try:
                _set_module(model, name, cls(module, dtype))
            except RuntimeError as e:  # a GPU or dtype the semi-structured kernels refuse
                reason = str(e).splitlines()[0]
        row.update(chosen="dense" if reason else "semi-structured", note=reason or "")
        rows.append(row)
    replaced = [r["name"] for r in rows if r["chosen"] != "dense"]
    return model, {"layers": rows, "replaced": replaced}
