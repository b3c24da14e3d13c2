"""Removing pruned attention heads: smaller q, k, v and output projections, same outputs.

``compact_heads_(model)`` works on a finalized model in eval mode (plain weights, zeros baked in).
In every attention module that ``sparsity.attention.find_attention`` finds, head ``h`` is
removable exactly when its contribution to the output does not depend on the input:

- its output-projection columns are zero: it adds nothing;
- its v rows are zero and its v bias is zero (or absent): its context is 0 and it adds nothing;
- its v rows are zero and its v bias ``b`` is not: every row of its context is
  ``sum_j softmax_ij * b = b`` (attention weights sum to 1), so it adds the constant
  ``W_o[:, cols_h] @ b``, which is folded into the output projection's bias (kept when the
  output projection has no bias, with a note).

Zero q or k rows alone do not make a head removable (its attention becomes uniform, not zero):
such heads are kept and listed in the notes. At least one head is always kept. The module is then
rebuilt with the kept heads only: q, k, v rows and output columns of the removed heads are cut,
and the head count (and the sizes derived from it) is updated so that the module's own forward
runs. ``nn.MultiheadAttention`` cannot hold fewer heads than ``embed_dim / head_dim``: it is
replaced by ``HeadsAttention``, which has its forward signature and outputs.
``apply_heads_(model, kept)`` rebuilds a freshly built model to the same shapes, for loading the
saved weights of a compacted model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.errors import ConfigError
from ...sparsity.attention import AttentionBlock, Part, find_attention


class HeadsAttention(nn.Module):
    """``nn.MultiheadAttention`` (self- or cross-attention, same embed dim for q, k and v) with
    only some of its heads: ``in_proj_weight`` ``(3*k*d, E)`` holds the q, k and v rows of the
    ``k`` kept heads, ``out_proj`` maps ``k*d`` back to ``E``.

    ``forward`` takes MultiheadAttention's arguments and returns ``(output, weights)`` the same
    way. Two differences, both about removed heads: a 3-D ``attn_mask`` ``(N * H, L, S)`` is
    given for the original ``H = source_heads`` heads, and the kept heads' slices are used; the
    returned attention weights are those of the kept heads (averaged over them when
    ``average_attn_weights``), since removed heads no longer exist.
    """

    def __init__(
        self,
        embed_dim: int,
        kept_heads: list[int],
        head_dim: int,
        source_heads: int,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        k = len(kept_heads)
        self.embed_dim, self.head_dim, self.num_heads = embed_dim, head_dim, k
        self.kept_heads, self.source_heads = list(kept_heads), source_heads
        self.dropout, self.batch_first = dropout, batch_first
        self.in_proj_weight = nn.Parameter(torch.empty(3 * k * head_dim, embed_dim, **fk))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * k * head_dim, **fk)) if bias else None
        self.out_proj = nn.Linear(k * head_dim, embed_dim, bias=bias, **fk)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1 if not self.batch_first else 0)
                                 for t in (query, key, value))  # fmt: skip
        if not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, length, _ = query.shape
        s = key.shape[1]
        kd = self.num_heads * self.head_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else b.split(kd)
        wq, wk, wv = w.split(kd)
        q = self._heads(F.linear(query, wq, bq))  # (N, k, L, d)
        k = self._heads(F.linear(key, wk, bk))
        v = self._heads(F.linear(value, wv, bv))
        scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (N, k, L, S)
        scores = scores + self._bias(attn_mask, key_padding_mask, is_causal, n, length, s, q)
        attn = scores.softmax(dim=-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, p=self.dropout)
        ctx = (attn @ v).transpose(1, 2).reshape(n, length, kd)
        out = self.out_proj(ctx)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1 if not self.batch_first else 0)
        if not need_weights:
            return out, None
        weights = attn.mean(dim=1) if average_attn_weights else attn
        return out, (weights.squeeze(0) if unbatched else weights)

    def _heads(self, x: Tensor) -> Tensor:
        n, length, _ = x.shape
        return x.reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _bias(self, attn_mask, key_padding_mask, is_causal, n, length, s, like) -> Tensor:
        """The additive mask ``(N or 1, k or 1, L, S)``: -inf where a bool mask is True."""
        bias = torch.zeros((1, 1, length, s), dtype=like.dtype, device=like.device)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, s, dtype=torch.bool, device=like.device).triu(1)
        if attn_mask is not None:
            m = _additive(attn_mask, like)
            if m.dim() == 3:  # (N * H, L, S) for the original heads
                m = m.reshape(n, self.source_heads, length, s)[:, self.kept_heads]
            bias = bias + m
        if key_padding_mask is not None:
            bias = bias + _additive(key_padding_mask, like).reshape(n, 1, 1, s)
        return bias


def _additive(mask: Tensor, like: Tensor) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(like.dtype)


# -- which heads go ------------------------------------------------------------------------------


def _tensor(model: nn.Module, part: Part) -> tuple[Tensor, Tensor | None]:
    """The part's weight in the ``(out, in)`` view and its bias (plain tensors, no copy)."""
    m = model.get_submodule(part.module)
    w = getattr(m, part.tensor).detach()
    b = getattr(m, part.bias).detach() if part.bias else None
    return (w.t() if part.transposed else w), b


def _unsupported(model: nn.Module, block: AttentionBlock) -> str:
    m = model.get_submodule(block.name)
    if block.kind == "mha" and (m.bias_k is not None or m.add_zero_attn):
        return "bias_k/bias_v or add_zero_attn: heads are not removed"
    if block.kind == "timm" and not isinstance(getattr(m, "norm", nn.Identity()), nn.Identity):
        return "a norm over all heads (scale_norm) before the projection: heads are not removed"
    return ""


def _decide(model: nn.Module, block: AttentionBlock) -> tuple[list[int], list[tuple], list[str]]:
    """``(kept heads, folds (head, v bias rows, out columns), notes)`` of one module."""
    notes: list[str] = []
    reason = _unsupported(model, block)
    if reason:
        return list(range(block.num_heads)), [], [reason]
    out_part = block.part("out")
    wo, bo = _tensor(model, out_part)
    kept, folds, uniform, no_bias = [], [], [], []
    for h in range(block.num_heads):
        cols = block.index("out", h)[1]
        vp, rows = block.index("v", h)
        wv, bv = _tensor(model, vp)
        qk_zero = all(
            not bool(_tensor(model, block.index(r, h)[0])[0][block.index(r, h)[1]].any())
            for r in ("q", "k")
        )
        if not bool(wo[:, cols].any()):
            continue  # adds nothing
        if bool(wv[rows].any()):
            kept.append(h)
            if qk_zero:
                uniform.append(h)
            continue
        if bv is None or not bool(bv[rows].any()):
            continue  # context 0
        if bo is None:
            kept.append(h)
            no_bias.append(h)
            continue
        folds.append((h, rows, cols))
    if uniform:
        notes.append(f"heads {uniform} kept: zero q/k rows but non-zero v (uniform attention)")
    if no_bias:
        notes.append(
            f"heads {no_bias} kept: zero v rows with a non-zero v bias, and the output "
            "projection has no bias to fold it into"
        )
    if not kept:
        first = min([h for h, _, _ in folds] or [0])
        folds = [f for f in folds if f[0] != first]
        kept = [first]
        notes.append(f"every head is removable: head {first} kept (a module needs one)")
    return kept, folds, notes


@torch.no_grad()
def _fold(model: nn.Module, block: AttentionBlock, folds: list[tuple]) -> None:
    """``o_bias += W_o[:, cols_h] @ b_v[rows_h]`` for every folded head (module doc)."""
    out_part = block.part("out")
    wo, _ = _tensor(model, out_part)
    bias = getattr(model.get_submodule(out_part.module), out_part.bias)
    for h, rows, cols in folds:
        _, bv = _tensor(model, block.index("v", h)[0])
        bias.add_((wo[:, cols].double() @ bv[rows].double()).to(bias.dtype))


def compact_heads_(model: nn.Module) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    """Remove the exactly removable heads of every attention module (module doc), in place.

    Returns ``({attention module: kept head indices}, {attention module: notes})``: the first
    for every module found (all heads where none went), for ``apply_heads_``; the second says
    why heads that look removable were kept. Run on a finalized model in eval mode."""
    kept: dict[str, list[int]] = {}
    notes: dict[str, list[str]] = {}
    for block in find_attention(model):
        heads, folds, why = _decide(model, block)
        _fold(model, block, folds)
        kept[block.name] = heads
        if why:
            notes[block.name] = why
    apply_heads_(model, kept)
    return kept, notes


# -- rebuilding ----------------------------------------------------------------------------------


def apply_heads_(model: nn.Module, kept: Mapping[str, list[int]]) -> nn.Module:
    """Rebuild every attention module named in ``kept`` with those heads only (in that order),
    slicing its current tensors: after ``compact_heads_``'s own decision, or on a freshly built
    model before loading a compacted model's saved weights. A module given all its heads is
    left as it is. Unknown names and bad head lists are refused with one line."""
    blocks = {b.name: b for b in find_attention(model)}
    for name, heads in kept.items():
        if name not in blocks:
            known = ", ".join(blocks) or "none"
            raise ConfigError(
                f"heads: '{name}' is no attention module of the model; found: {known}"
            )
        block = blocks[name]
        heads = [int(h) for h in heads]
        if (
            not heads
            or len(set(heads)) != len(heads)
            or not all(0 <= h < block.num_heads for h in heads)
        ):
            raise ConfigError(
                f"heads of '{name}': expected distinct indices in [0, {block.num_heads}), at "
                f"least one, got {heads}"
            )
        if heads != list(range(block.num_heads)):
            _rebuild(model, block, heads)
    return model


def _rows(block: AttentionBlock, part: Part, heads: list[int]) -> list[int]:
    roles = ("q", "k", "v") if part.role == "qkv" else (part.role,)
    return [i for r in roles for h in heads for i in block.index(r, h)[1]]


@torch.no_grad()
def _cut(module: nn.Module, part: Part, rows=None, cols=None) -> nn.Module:
    """A new layer like ``module`` (Linear or Conv1D) with only these output rows / input
    columns of its ``(out, in)`` view."""
    w = module.weight.detach()
    w = w.t() if part.transposed else w
    b = module.bias.detach() if getattr(module, "bias", None) is not None else None
    if rows is not None:
        w, b = w[rows], (None if b is None else b[rows])
    if cols is not None:
        w = w[:, cols]
    out_f, in_f = w.shape
    fk = {"device": w.device, "dtype": w.dtype}
    if part.transposed:
        new = type(module)(out_f, in_f)  # Conv1D(nf, nx)
        new.to(**fk)
        new.weight.copy_(w.t())
        new.bias.copy_(b)
        return new
    new = nn.Linear(in_f, out_f, bias=b is not None, **fk)
    new.weight.copy_(w)
    if b is not None:
        new.bias.copy_(b)
    return new


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _rebuild(model: nn.Module, block: AttentionBlock, heads: list[int]) -> None:
    k, d = len(heads), block.head_dim
    if block.kind == "mha":
        _set(model, block.name, _heads_attention(model.get_submodule(block.name), block, heads))
        return
    for part in block.parts:
        m = model.get_submodule(part.module)
        if part.role == "out":
            new = _cut(m, part, cols=_rows(block, part, heads))
        else:
            new = _cut(m, part, rows=_rows(block, part, heads))
        _set(model, part.module, new)
    m = model.get_submodule(block.name)
    if block.kind == "timm":
        m.num_heads, m.attn_dim = k, k * d
    elif block.kind == "hf":
        for attr in ("num_attention_heads", "n_heads"):
            if hasattr(m, attr):
                setattr(m, attr, k)
        if hasattr(m, "all_head_size"):
            m.all_head_size = k * d
    elif block.kind == "gpt2":
        m.num_heads, m.split_size = k, k * d


@torch.no_grad()
def _heads_attention(m: nn.MultiheadAttention, block: AttentionBlock, heads: list[int]):
    qkv = block.part("qkv")
    rows = _rows(block, qkv, heads)
    cols = _rows(block, block.part("out"), heads)
    w = m.in_proj_weight.detach()
    new = HeadsAttention(
        m.embed_dim,
        heads,
        block.head_dim,
        block.num_heads,
        bias=m.in_proj_bias is not None,
        dropout=m.dropout,
        batch_first=m.batch_first,
        device=w.device,
        dtype=w.dtype,
    )
    new.in_proj_weight.copy_(w[rows])
    if m.in_proj_bias is not None:
        new.in_proj_bias.copy_(m.in_proj_bias.detach()[rows])
    new.out_proj.weight.copy_(m.out_proj.weight.detach()[:, cols])
    if new.out_proj.bias is not None:
        new.out_proj.bias.copy_(m.out_proj.bias.detach())
    new.train(m.training)
    return new


__all__ = ["HeadsAttention", "apply_heads_", "compact_heads_"]
