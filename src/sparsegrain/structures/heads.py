"""``head``: one attention head, across the projections of one attention module.

A head ``h`` of an attention module with ``H`` heads of size ``d`` owns rows ``h*d .. h*d+d-1``
of each of its q, k and v projections (in a fused ``(3*H*d, E)`` projection, those rows of each
of the three ``H*d`` blocks) and the same columns of its output projection. On one weight the
structure is bound to its role in the module (``part``) and to ``H``:

- ``head:H`` (``rows``): a q, k or v projection ``(H*d, C)``; group ``h`` is rows of head ``h``;
- ``head:H:qkv``: a fused q/k/v projection ``(3*H*d, C)``; group ``h`` is its 3 x d rows;
- ``head:H:cols``: the output projection ``(K, H*d)``; group ``h`` is its d columns of head h.

A recipe writes ``head``; layer selection binds every projection of every attention module that
``sparsity.attention.find_attention`` finds, and one head mask is chosen per module from all its
projections together (``sparsity.heads``), so every part drops the same heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from ..core.errors import ConfigError
from .core import Shape4, Structure

PARTS = {"rows": 1, "qkv": 3, "cols": 0}  # part -> blocks of H*d rows (0: columns)
_FORM = "head, head:H or head:H:PART with an integer H >= 2 and PART rows, qkv or cols"
UNBOUND = (
    "head applies only to the q, k, v and output projections of an attention module "
    "(nn.MultiheadAttention, timm Attention, Hugging Face self-attention)"
)


@dataclass(frozen=True)
class Head(Structure):
    """head: one attention head (q, k, v rows and output columns); domain the attention module."""

    heads: int = 0  # 0: not bound to a module yet (a recipe's plain "head")
    part: str = "rows"
    name = "head"
    group = "one attention head: its rows of q, k and v and its columns of the output projection"
    domain = "the attention module (one head mask for all of its projections)"

    def __post_init__(self) -> None:
        h = self.heads
        if isinstance(h, bool) or not isinstance(h, int) or h < 0 or self.part not in PARTS:
            raise ConfigError(
                f"structure head: expected {_FORM}, got heads={h!r}, part={self.part!r}"
            )

    @classmethod
    def from_params(cls, params: Sequence[str], spec: str) -> Head:
        if not params:
            return cls()
        text = params[0].strip()
        part = params[1].strip() if len(params) == 2 else "rows"
        if len(params) > 2 or not (text.isascii() and text.isdigit()) or part not in PARTS:
            raise ConfigError(f"structure '{spec}': expected {_FORM}")
        if int(text) < 2:
            raise ConfigError(f"structure '{spec}': expected {_FORM}")
        return cls(int(text), part)

    @property
    def spec(self) -> str:
        if self.heads == 0:
            return "head"
        return f"head:{self.heads}" + ("" if self.part == "rows" else f":{self.part}")

    def _fits4(self, shape4: Shape4) -> str | None:
        if self.heads == 0:
            return UNBOUND
        if self.heads < 2:
            return f"{self.spec} needs more than one head"
        k, c = shape4[:2]
        blocks = PARTS[self.part]
        if blocks and k % (blocks * self.heads):
            return f"{self.spec} needs K divisible by {blocks * self.heads}, got K={k}"
        if not blocks and c % self.heads:
            return f"{self.spec} needs C divisible by {self.heads}, got C={c}"
        return None

    def layout(self, shape4: Shape4) -> tuple[int, int, int]:
        k, c, r, s = shape4
        return (1, self.heads, k * c * r * s // self.heads)

    def group_view(self, w4: Tensor) -> Tensor:
        k, c, r, s = w4.shape
        h, blocks = self.heads, PARTS[self.part]
        if blocks:  # (blocks, H, d, C*R*S) -> head first
            t = w4.reshape(blocks, h, k // (blocks * h), c * r * s).permute(1, 0, 2, 3)
        else:  # (K, H, d, R*S) -> head first
            t = w4.reshape(k, h, c // h, r * s).permute(1, 0, 2, 3)
        return t.reshape(1, h, -1)

    def from_group_view(self, t: Tensor, shape4: Sequence[int]) -> Tensor:
        k, c, r, s = self._check_view(t, shape4)
        h, blocks = self.heads, PARTS[self.part]
        if blocks:
            out = t.reshape(h, blocks, k // (blocks * h), c * r * s).permute(1, 0, 2, 3)
        else:
            out = t.reshape(h, k, c // h, r * s).permute(1, 0, 2, 3)
        return out.reshape(k, c, r, s)

    def group_label(self, d: int, g: int, shape4: Shape4) -> str:
        return f"head {g}"

    def domain_label(self, d: int, shape4: Shape4) -> str:
        return "attention module"
