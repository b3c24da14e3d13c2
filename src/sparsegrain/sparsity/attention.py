"""Attention modules, found from what they hold: heads, head size and the projections of each head.

``find_attention(model)`` returns one ``AttentionBlock`` per multi-head attention module it
recognises, in model order. Four kinds, each recognised by its class and attributes (none of the
packages is imported here):

- ``mha``: ``nn.MultiheadAttention`` with one fused ``in_proj_weight`` ``(3E, E)`` (a Parameter of
  the module itself, rows ``[q; k; v]``) and ``out_proj`` (a Linear);
- ``timm``: timm's ``Attention`` (``qkv`` Linear ``(3*H*d, E)``, ``proj``, ``num_heads``,
  ``head_dim``; the reshape in its forward puts q, k and v in three blocks of ``H*d`` rows);
- ``hf``: Hugging Face self-attention with separate ``query``/``key``/``value`` (BERT),
  ``q_proj``/``k_proj``/``v_proj`` (ViT) or ``q_lin``/``k_lin``/``v_lin`` (DistilBERT) Linears,
  ``num_attention_heads`` (or ``n_heads``) and ``attention_head_size`` or ``head_dim``; the
  output projection is the sibling output module's ``dense`` (``BertSelfOutput``,
  ``ViTSelfOutput``), or the module's own ``o_proj``/``out_proj``/``out_lin``/``dense``
  (ALBERT);
- ``gpt2``: GPT-2's attention (``c_attn`` and ``c_proj`` are ``Conv1D``: weights stored
  ``(in, out)``; ``split_size`` splits the fused output into q, k and v).

Every index below is in the ``(out, in)`` view of a weight: head ``h`` of size ``d`` owns rows
``off + h*d .. off + h*d + d - 1`` of a q, k or v projection (``off`` = 0, E or 2E in a fused
one) and the same columns of the output projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FUSED_ROLES = ("q", "k", "v")


def is_conv1d(module: nn.Module) -> bool:
    """A Hugging Face ``Conv1D`` (``y = x @ W + b``, ``W`` of shape ``(nx, nf)`` = (in, out)),
    recognised by class name (its own or a base's: a parametrized module's class derives from
    it) and attributes so that transformers need not be imported."""
    w = getattr(module, "weight", None)
    nf, nx = getattr(module, "nf", None), getattr(module, "nx", None)
    return (
        any(c.__name__ == "Conv1D" for c in type(module).__mro__)
        and isinstance(w, torch.Tensor)
        and w.dim() == 2
        and tuple(w.shape) == (nx, nf)
    )


@dataclass(frozen=True)
class Part:
    """One projection of an attention module, as layer selection names it."""

    layer: str  # the targeted layer: a module name, or '<mha>.in_proj_weight'
    module: str  # the module holding the tensor
    tensor: str  # 'weight' or 'in_proj_weight'
    bias: str | None  # the bias Parameter's name on that module, if it has one
    role: str  # 'qkv' (fused rows q; k; v), 'q', 'k', 'v' or 'out' (columns)
    transposed: bool = False  # stored (in, out): a Hugging Face Conv1D

    @property
    def kind(self) -> str:
        """The ``head`` structure's part: ``qkv``, ``rows`` or ``cols``."""
        return "qkv" if self.role == "qkv" else "cols" if self.role == "out" else "rows"


@dataclass(frozen=True)
class AttentionBlock:
    """A multi-head attention module: its name, kind, heads, head size and projections."""

    name: str
    kind: str  # 'mha' | 'timm' | 'hf' | 'gpt2'
    num_heads: int
    head_dim: int
    parts: tuple[Part, ...]

    @property
    def inner_dim(self) -> int:
        """``H * d``: rows of each of q, k, v and columns of the output projection."""
        return self.num_heads * self.head_dim

    def part(self, role: str) -> Part | None:
        """The part holding ``role`` (q, k, v or out; a fused part holds q, k and v)."""
        for p in self.parts:
            if p.role == role or (p.role == "qkv" and role in FUSED_ROLES):
                return p
        return None

    def index(self, role: str, head: int) -> tuple[Part, list[int]]:
        """The part and the rows (``q``/``k``/``v``) or columns (``out``) of ``head`` in it."""
        p = self.part(role)
        if p is None:
            raise KeyError(f"attention module '{self.name}' has no {role} projection")
        off = FUSED_ROLES.index(role) * self.inner_dim if p.role == "qkv" else 0
        start = off + head * self.head_dim
        return p, list(range(start, start + self.head_dim))

    def heads_index(self, part: Part) -> tuple[tuple[int, ...], ...]:
        """Per head, the rows (or columns, for ``out``) of ``part`` that belong to it."""
        roles = FUSED_ROLES if part.role == "qkv" else (part.role,)
        return tuple(
            tuple(i for r in roles for i in self.index(r, h)[1]) for h in range(self.num_heads)
        )


def find_attention(model: nn.Module) -> list[AttentionBlock]:
    """Every multi-head attention module of ``model`` that one of the four kinds (module doc)
    describes, in model order; a module of none of them is not listed."""
    modules = dict(model.named_modules())
    out = []
    for name, m in modules.items():
        block = _mha(name, m) or _timm(name, m) or _hf(name, m, modules) or _gpt2(name, m)
        if block is not None and block.num_heads >= 1:
            out.append(block)
    return out


def _join(*names: str) -> str:
    return ".".join(n for n in names if n)


def _bias(module: nn.Module, name: str) -> str | None:
    return name if isinstance(getattr(module, name, None), nn.Parameter) else None


def _linear_part(owner: str, child: str, m: nn.Module, role: str) -> Part:
    return Part(_join(owner, child), _join(owner, child), "weight", _bias(m, "bias"), role)


def _int_attr(m: nn.Module, *names: str) -> int | None:
    for n in names:
        v = getattr(m, n, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _mha(name: str, m: nn.Module) -> AttentionBlock | None:
    if not isinstance(m, nn.MultiheadAttention) or not isinstance(m.in_proj_weight, nn.Parameter):
        return None  # separate q/k/v weights (kdim or vdim differ) are not handled
    bias = _bias(m, "in_proj_bias")
    qkv = Part(_join(name, "in_proj_weight"), name, "in_proj_weight", bias, "qkv")
    parts = (qkv, _linear_part(name, "out_proj", m.out_proj, "out"))
    return AttentionBlock(name, "mha", m.num_heads, m.head_dim, parts)


def _timm(name: str, m: nn.Module) -> AttentionBlock | None:
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    h, d = _int_attr(m, "num_heads"), _int_attr(m, "head_dim")
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and h and d):
        return None
    if qkv.out_features != 3 * h * d or proj.in_features != h * d:
        return None
    if getattr(m, "gate", None) is not None:
        return None  # a gated variant has a fourth per-head projection
    parts = (_linear_part(name, "qkv", qkv, "qkv"), _linear_part(name, "proj", proj, "out"))
    return AttentionBlock(name, "timm", h, d, parts)


_QKV_NAMES = (
    ("query", "key", "value"),
    ("q_proj", "k_proj", "v_proj"),
    ("q_lin", "k_lin", "v_lin"),
)


def _hf(name: str, m: nn.Module, modules: dict[str, nn.Module]) -> AttentionBlock | None:
    h = _int_attr(m, "num_attention_heads", "n_heads")
    d = _int_attr(m, "attention_head_size", "head_dim")
    names = next((t for t in _QKV_NAMES if all(hasattr(m, n) for n in t)), None)
    if not (h and d and names) or not all(
        isinstance(getattr(m, n), nn.Linear) and getattr(m, n).out_features == h * d for n in names
    ):
        return None
    out = _hf_output(name, m, modules, h * d)
    if out is None:
        return None
    parts = tuple(_linear_part(name, n, getattr(m, n), r) for n, r in zip(names, FUSED_ROLES))
    return AttentionBlock(name, "hf", h, d, (*parts, out))


def _hf_output(name: str, m: nn.Module, modules, inner: int) -> Part | None:
    """The output projection: the module's own ``o_proj``/``out_proj``, else the ``dense`` of a
    sibling module (BERT's and ViT's ``*SelfOutput``)."""
    for child in ("o_proj", "out_proj", "out_lin", "dense"):
        lin = getattr(m, child, None)
        if isinstance(lin, nn.Linear) and lin.in_features == inner:
            return _linear_part(name, child, lin, "out")
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    if parent not in modules or parent == name:
        return None
    for child, sib in modules[parent].named_children():
        dense = getattr(sib, "dense", None)
        if sib is not m and isinstance(dense, nn.Linear) and dense.in_features == inner:
            return _linear_part(_join(parent, child), "dense", dense, "out")
    return None


def _gpt2(name: str, m: nn.Module) -> AttentionBlock | None:
    c_attn, c_proj = getattr(m, "c_attn", None), getattr(m, "c_proj", None)
    h, d = _int_attr(m, "num_heads"), _int_attr(m, "head_dim")
    if not (h and d and is_conv1d(c_attn) and is_conv1d(c_proj)):
        return None
    if getattr(m, "is_cross_attention", False) or c_attn.nf != 3 * h * d or c_proj.nx != h * d:
        return None
    parts = (
        Part(_join(name, "c_attn"), _join(name, "c_attn"), "weight", "bias", "qkv", True),
        Part(_join(name, "c_proj"), _join(name, "c_proj"), "weight", "bias", "out", True),
    )
    return AttentionBlock(name, "gpt2", h, d, parts)
