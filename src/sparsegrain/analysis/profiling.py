"""What one forward pass computes: the layers it runs and the products made by functional calls.

``profile`` (in ``flops``) runs the model once with forward hooks on every Conv1d / Conv2d /
Linear and, around the whole call, a ``TorchFunctionMode`` (``Recorder``) that sees the torch
functions the model calls. Each call is attributed to the innermost module running it and, when
one of its operands is a parameter of the model (or a parametrized weight, which
``parametrize.cached`` keeps as one tensor for the whole pass), to that weight:

- ``F.linear`` / ``F.conv1d`` / ``F.conv2d`` / ``addmm`` / ``matmul`` ... whose weight is a
  parameter become a ``LayerGeometry`` named after the weight: the module's name for a parameter
  called ``weight`` (a Linear used functionally, Hugging Face's ``Conv1D``), else the
  parameter's own name (``attn.in_proj_weight``); a block of rows of one is named
  ``attn.in_proj_weight[16:48]``. Zero weights are skipped in the effective count as for layers.
- products of two activations (``q @ k^T``, ``attn @ v``, ``scaled_dot_product_attention``,
  ``einsum``, ...) become a ``FunctionalOp`` of the module that made them: dense = effective.
- ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``) runs its projections inside
  itself, out of the mode's sight, so it is counted from its arguments: the in-projection(s)
  and ``out_proj`` as weight geometries, the two attention products as one ``FunctionalOp``.

Counts are per example: the whole call's MACs divided by the example batch (dim 0 of the first
input tensor). As for layers, the ops of a module are counted at its first call, and ``calls``
says how often it ran. Calls the counter does not follow are listed in ``notes``.
"""

from __future__ import annotations

import inspect
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from .geometry import FunctionalOp, LayerGeometry, Pair, conv_padding, density, pair, plane

# -- which tensors are weights --------------------------------------------------------------------


def weight_tensors(model: nn.Module) -> dict[str, Tensor]:
    """``{name: tensor}`` of every parameter of 2+ dims (the parametrized value where one is
    attached): a module's ``weight`` is named by the module, any other by its own path."""
    out: dict[str, Tensor] = {}
    taken: set[int] = set()
    for path, m in model.named_modules():
        if isinstance(m, nn.utils.parametrize.ParametrizationList):
            continue
        names = list(m._parameters)
        if nn.utils.parametrize.is_parametrized(m):
            names += list(m.parametrizations.keys())
        for attr in names:
            t = getattr(m, attr)
            if not isinstance(t, Tensor) or t.dim() < 2 or id(t) in taken:
                continue
            taken.add(id(t))
            out[path if attr == "weight" and path else f"{path}.{attr}".lstrip(".")] = t
    return out


def _row_block(t: Tensor, base: Tensor) -> Pair | None:
    """``(r0, r1)`` when ``t`` is rows ``r0:r1`` of ``base`` (as ``chunk`` / ``split`` give)."""
    if t.dim() != base.dim() or t.shape[1:] != base.shape[1:] or t.stride() != base.stride():
        return None
    offset = t.storage_offset() - base.storage_offset()
    step = base.stride(0)
    if step == 0 or offset % step:
        return None
    return (offset // step, offset // step + int(t.shape[0]))


# -- the recorder ---------------------------------------------------------------------------------

_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)
_NOT_COUNTED = {
    torch.conv3d: "conv3d",
    F.conv_transpose1d: "conv_transpose1d",
    F.conv_transpose2d: "conv_transpose2d",
    F.conv_transpose3d: "conv_transpose3d",
    F.bilinear: "bilinear",
}
_T = torch.Tensor
# torch function -> (name, index of the first matrix operand): ``out = a @ b`` costs
# ``out.numel() * k`` MACs (``k`` = a's last dim), and ``addbmm`` sums ``a.shape[0]`` of them
_MATMULS = {
    torch.matmul: ("matmul", 0), _T.matmul: ("matmul", 0), _T.__matmul__: ("matmul", 0),
    torch.mm: ("mm", 0), _T.mm: ("mm", 0), torch.bmm: ("bmm", 0), _T.bmm: ("bmm", 0),
    torch.mv: ("mv", 0), _T.mv: ("mv", 0), torch.addmm: ("addmm", 1), _T.addmm: ("addmm", 1),
    torch.baddbmm: ("baddbmm", 1), _T.baddbmm: ("baddbmm", 1), torch.addmv: ("addmv", 1),
    _T.addmv: ("addmv", 1), torch.addbmm: ("addbmm", 1), _T.addbmm: ("addbmm", 1),
}  # fmt: skip
_OPERAND_KWARGS = ("input", "mat1", "batch1", "mat", "mat2", "batch2", "vec", "other")


class Recorder(TorchFunctionMode):
    """Records the layer geometries and functional products of one forward pass (module doc).

    Build it inside ``parametrize.cached()``, so that a parametrized weight is one tensor for
    the whole pass and is recognised wherever it is used.
    """

    def __init__(self, model: nn.Module, batch: int, candidates: dict[str, nn.Module]):
        super().__init__()
        self.batch = max(int(batch), 1)
        self.candidates = candidates
        self.geoms: dict[str, LayerGeometry] = {}  # first use of each weight, in call order
        self.uses: dict[str, int] = {}
        self.tensors: dict[str, Tensor] = {}  # the weight (block) each functional geometry used
        self.ops: dict[tuple[str, str], int] = {}
        self.runs: dict[str, int] = {}
        self.notes: list[str] = []
        self.stack: list[tuple[str, bool]] = []  # (module name, at its first call)
        weights = weight_tensors(model)
        self.keys = {id(t): k for k, t in weights.items()}
        self.keys.update({id(m.weight): n for n, m in candidates.items()})  # tied: the layer
        self._alive = list(weights.values())  # each id stays its tensor's while we run

    # -- the module stack, kept by hooks on every module

    def enter(self, name: str) -> None:
        self.runs[name] = self.runs.get(name, 0) + 1
        self.stack.append((name, self.runs[name] == 1))

    def leave(self) -> None:
        self.stack.pop()

    def _module(self) -> tuple[str, bool]:
        return self.stack[-1] if self.stack else ("", True)

    # -- what was recorded

    def add_geometry(self, name: str, make, tensor: Tensor | None = None) -> None:
        """One use of weight ``name``; ``make()`` gives its geometry at the first use."""
        self.uses[name] = self.uses.get(name, 0) + 1
        if name not in self.geoms:
            self.geoms[name] = make()
            if tensor is not None:
                self.tensors[name] = tensor.detach()

    def results(self) -> tuple[list[LayerGeometry], list[FunctionalOp], list[str]]:
        geoms = [
            g if self.uses[n] == 1 else replace(g, calls=self.uses[n])
            for n, g in self.geoms.items()
        ]
        ops = [FunctionalOp(n, op, macs, self.runs.get(n, 1)) for (n, op), macs in self.ops.items()]
        return geoms, ops, list(dict.fromkeys(self.notes))

    # -- attribution

    def weight(self, t) -> tuple[str, Tensor] | None:
        """The name and tensor of the parameter (or block of rows of one) that ``t`` is."""
        if not isinstance(t, Tensor):
            return None
        if id(t) in self.keys:
            return self.keys[id(t)], t
        base = t._base
        if base is None or id(base) not in self.keys:
            return None
        name = self.keys[id(base)]
        if t.numel() == base.numel():  # a transpose or reshape of the whole weight
            return name, base
        rows = _row_block(t, base)
        return None if rows is None else (f"{name}[{rows[0]}:{rows[1]}]", base[rows[0] : rows[1]])

    def own_weight(self, t) -> bool:
        """``t`` is the weight of the Conv/Linear layer running: its hook counts the call."""
        name = self._module()[0]
        if name not in self.candidates:
            return False
        found = self.weight(t)
        return found is not None and found[0] == name

    def note(self, text: str) -> None:
        self.notes.append(f"{self._module()[0] or '(model)'}: {text}")

    def op(self, op: str, total: int) -> None:
        """``total`` MACs (whole batch) of products between activations."""
        name, first = self._module()
        if not first:
            return
        if total % self.batch:
            self.note(f"{op} of {total} MACs is not a multiple of the batch; counted whole")
        else:
            total //= self.batch
        self.ops[(name, op)] = self.ops.get((name, op), 0) + total

    def weight_use(self, w, k: int, total: int, op: str, x: Tensor | None = None) -> None:
        """``total`` MACs (whole batch) of activations with ``k`` features times ``w``: a
        linear geometry when ``w`` is a parameter, else a functional op."""
        found = self.weight(w)
        if found is None or total % (self.batch * found[1].numel()):
            self.op(op, total)
            return
        name, tensor = found
        positions = total // (self.batch * tensor.numel())
        out = tensor.numel() // k

        def make() -> LayerGeometry:
            return LayerGeometry(
                name, "linear", tuple(tensor.shape), (k, 1, positions), (out, 1, positions),
                act_density=1.0 if x is None else density(x),
            )  # fmt: skip

        self.add_geometry(name, make, tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = _HANDLERS.get(func)
        if handler is not None:
            return handler(self, func, args, kwargs)
        if func in _NOT_COUNTED:
            self.note(f"{_NOT_COUNTED[func]} is not counted")
        return func(*args, **kwargs)


# -- handlers: each runs the call and records its MACs --------------------------------------------


def _linear(rec: Recorder, func, args, kwargs):
    x = args[0] if args else kwargs["input"]
    w = args[1] if len(args) > 1 else kwargs["weight"]
    if not rec.own_weight(w):
        k = int(x.shape[-1])
        rec.weight_use(w, k, (x.numel() // max(k, 1)) * w.numel(), "linear", x)
    return func(*args, **kwargs)


def _conv(rec: Recorder, func, args, kwargs):
    out = func(*args, **kwargs)
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    a = {**dict(zip(names, args)), **kwargs}
    x, w = a["input"], a["weight"]
    if rec.own_weight(w):
        return out
    found = rec.weight(w)
    if found is None or found[1].shape != w.shape:
        rec.op(func.__name__, out.numel() * (w.numel() // w.shape[0]))
        return out
    kind = "conv1d" if w.dim() == 3 else "conv2d"

    def two(v, fill: int) -> Pair:  # conv2d's int means both dims, conv1d's the width
        return (int(v), int(v)) if kind == "conv2d" and isinstance(v, int) else pair(v, fill)

    dil = two(a.get("dilation", 1), 1)
    pad = a.get("padding", 0)

    def make() -> LayerGeometry:
        return LayerGeometry(
            name=found[0],
            kind=kind,
            weight_shape=tuple(w.shape),
            in_shape=plane(x, kind),
            out_shape=plane(out, kind),
            stride=two(a.get("stride", 1), 1),
            padding=conv_padding(pad, pair(tuple(w.shape[2:]), 1), dil)
            if isinstance(pad, str)
            else two(pad, 0),
            dilation=dil,
            groups=int(a.get("groups", 1)),
            act_density=density(x),
        )

    rec.add_geometry(found[0], make, found[1])
    return out


def _matmul(rec: Recorder, func, args, kwargs):
    out = func(*args, **kwargs)
    op, first = _MATMULS[func]
    vals = [*args, *(kwargs[n] for n in _OPERAND_KWARGS if n in kwargs)]
    a, b = vals[first], vals[first + 1]
    k = int(a.shape[-1])
    total = out.numel() * k * (int(a.shape[0]) if op == "addbmm" else 1)
    if rec.own_weight(a) or rec.own_weight(b):
        return out
    wa, wb = rec.weight(a), rec.weight(b)
    if op != "addbmm" and wb is not None and wa is None and b.dim() == 2:
        rec.weight_use(b, k, total, op, a)  # x @ W: W is (k, out)
    elif op != "addbmm" and wa is not None and wb is None and a.dim() == 2:
        rec.weight_use(a, k, total, op, b)  # W @ x: W is (out, k)
    else:
        rec.op(op, total)
    return out


def _sdpa(rec: Recorder, func, args, kwargs):
    out = func(*args, **kwargs)
    q = args[0] if args else kwargs["query"]
    k = args[1] if len(args) > 1 else kwargs["key"]
    # per (batch, head): scores q k^T is (L, E) x (E, S), then weights @ v is (L, S) x (S, Ev)
    rows = out.numel() // max(int(out.shape[-1]), 1)
    rec.op("sdpa", rows * int(k.shape[-2]) * (int(q.shape[-1]) + int(out.shape[-1])))
    return out


def _einsum(rec: Recorder, func, args, kwargs):
    with FlopCounterMode(display=False) as counter:  # the contractions torch actually runs
        out = func(*args, **kwargs)
    rec.op("einsum", counter.get_total_flops() // 2)
    return out


def _mha(rec: Recorder, func, args, kwargs):
    """``nn.MultiheadAttention``: query ``(L, N, E)``, key and value ``(S, N, .)``."""
    bound = _MHA_SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    p = bound.arguments
    q, k, v = p["query"], p["key"], p["value"]
    n = int(q.shape[1]) if q.dim() == 3 else 1
    seq_q, seq_k, e = int(q.shape[0]), int(k.shape[0]), int(q.shape[-1])
    if not p["use_separate_proj_weight"]:
        w = p["in_proj_weight"]
        if q is k and k is v:  # self-attention: one (3E, E) product
            uses = [(w, q), None, None]
        else:
            uses = [(w[:e], q), (w[e : 2 * e], k), (w[2 * e :], v)]
    else:
        uses = [(p["q_proj_weight"], q), (p["k_proj_weight"], k), (p["v_proj_weight"], v)]
    seq_kv = seq_k + (p["bias_k"] is not None) + bool(p["add_zero_attn"])
    if p["static_k"] is not None:  # given already projected: no k projection
        uses[1], seq_kv = None, int(p["static_k"].shape[1]) + bool(p["add_zero_attn"])
    if p["static_v"] is not None:
        uses[2] = None
    for i, use in enumerate(uses):
        if use is not None:
            w, x = use
            rows = (seq_q if i == 0 else seq_k) * n
            rec.weight_use(w, int(x.shape[-1]), rows * w.numel(), "linear", x)
    rec.op("attention", 2 * n * seq_q * seq_kv * e)  # q k^T and attn @ v, all heads together
    w_out = p["out_proj_weight"]
    rec.weight_use(w_out, e, seq_q * n * w_out.numel(), "linear")  # its input: attention output
    return func(*args, **kwargs)


_HANDLERS = {
    F.linear: _linear,
    torch.conv1d: _conv,
    torch.conv2d: _conv,
    F.scaled_dot_product_attention: _sdpa,
    torch.einsum: _einsum,
    F.multi_head_attention_forward: _mha,
    **dict.fromkeys(_MATMULS, _matmul),
}
