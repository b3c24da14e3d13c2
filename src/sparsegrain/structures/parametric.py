"""Structures with parameters: N:M (``nm:2:4``), blocks (``block:4x4``), Campfire combined."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from ..core.errors import ConfigError
from .catalog import Kernel, KernelQuota, Window
from .core import Score, Shape4, Structure, check_sparsity, keep_count, unravel

_NM_FORM = "nm:N:M with integers 1 <= N <= M (e.g. nm:2:4)"
_BLOCK_FORM = "block:B1xB2 with integers B1, B2 >= 1 (e.g. block:4x4)"
_COMBINED_FORM = "combined or combined:SPLIT with 0 <= SPLIT <= 1 (e.g. combined:0.3)"


def _int(text: str) -> int | None:
    """A parameter of ASCII digits as an int (``int`` alone also reads other scripts' digits)."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def _as_ints(obj: object, *fields: str) -> bool:
    """Normalise integer-like fields (numpy ints too) to int; False if any is not an integer."""
    for f in fields:
        v = getattr(obj, f)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            return False
        object.__setattr__(obj, f, int(v))
    return True


@dataclass(frozen=True)
class NM(Structure):
    """nm:N:M: one element per group; domain M consecutive elements of a row of the GEMM view.

    Final sparsity is ``1 - n/m``. For a target ``s`` each domain keeps ``max(n, m - round(s*m))``
    elements, so a gradual ramp passes through (m-1):m, (m-2):m, ... down to n:m and stays there.
    """

    n: int = 2
    m: int = 4
    name = "nm"
    group = "one element W[k,c,r,s]"
    domain = "M consecutive elements along C*R*S (c, r, s order) of each output row k"
    balanced = True
    element_granular = True

    def __post_init__(self) -> None:
        ok = _as_ints(self, "n", "m")
        if not ok or not 1 <= self.n <= self.m:
            raise ConfigError(f"structure nm: expected {_NM_FORM}, got n={self.n!r}, m={self.m!r}")

    @classmethod
    def from_params(cls, params: Sequence[str], spec: str) -> NM:
        nums = [_int(p) for p in params]
        if len(nums) != 2 or None in nums or not 1 <= nums[0] <= nums[1]:  # type: ignore[operator]
            raise ConfigError(f"structure '{spec}': expected {_NM_FORM}")
        return cls(nums[0], nums[1])  # type: ignore[arg-type]

    @property
    def spec(self) -> str:
        return f"nm:{self.n}:{self.m}"

    @property
    def fixed_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    @property
    def notes(self) -> tuple[str, ...]:
        return (
            f"final sparsity 1 - {self.n}/{self.m} = {self.fixed_sparsity:g}; a target s keeps "
            f"max({self.n}, {self.m} - round(s*{self.m})) of every {self.m}",
        )

    def _fits4(self, shape4: Shape4) -> str | None:
        _, c, r, s = shape4
        if (c * r * s) % self.m:
            return f"{self.spec} needs C*R*S divisible by {self.m}, got {c * r * s}"
        return None

    def min_keep(self, shape4: Shape4) -> int:
        return self.n

    def layout(self, shape4: Shape4) -> tuple[int, int, int]:
        k, c, r, s = shape4
        return (k * c * r * s // self.m, self.m, 1)

    def group_view(self, w4: Tensor) -> Tensor:
        return w4.reshape(-1, self.m, 1)

    def from_group_view(self, t: Tensor, shape4: Sequence[int]) -> Tensor:
        return t.reshape(self._check_view(t, shape4))

    def group_label(self, d: int, g: int, shape4: Shape4) -> str:
        return f"element {unravel(d * self.m + g, shape4)}"

    def domain_label(self, d: int, shape4: Shape4) -> str:
        per_row = shape4[1] * shape4[2] * shape4[3] // self.m
        k, j = divmod(d, per_row)
        return f"row {k}, columns {j * self.m}..{j * self.m + self.m - 1}"


@dataclass(frozen=True)
class Block(Structure):
    """block:B1xB2: a B1 x B2 tile of the (K, C*R*S) GEMM view per group; domain the layer."""

    b1: int = 4
    b2: int = 4
    name = "block"
    group = "a B1 x B2 tile of the (K, C*R*S) GEMM view"

    def __post_init__(self) -> None:
        ok = _as_ints(self, "b1", "b2")
        if not ok or self.b1 < 1 or self.b2 < 1:
            raise ConfigError(
                f"structure block: expected {_BLOCK_FORM}, got b1={self.b1!r}, b2={self.b2!r}"
            )

    @classmethod
    def from_params(cls, params: Sequence[str], spec: str) -> Block:
        dims = params[0].split("x") if len(params) == 1 else []
        nums = [_int(p) for p in dims]
        if len(nums) != 2 or None in nums or 0 in nums:
            raise ConfigError(f"structure '{spec}': expected {_BLOCK_FORM}")
        return cls(nums[0], nums[1])  # type: ignore[arg-type]

    @property
    def spec(self) -> str:
        return f"block:{self.b1}x{self.b2}"

    def _fits4(self, shape4: Shape4) -> str | None:
        k, c, r, s = shape4
        crs = c * r * s
        if k % self.b1 or crs % self.b2:
            return (
                f"{self.spec} needs K divisible by {self.b1} and C*R*S divisible by "
                f"{self.b2}, got ({k}, {crs})"
            )
        if (k // self.b1) * (crs // self.b2) < 2:
            return f"{self.spec} needs more than one block, got one block of ({k}, {crs})"
        return None

    def layout(self, shape4: Shape4) -> tuple[int, int, int]:
        k, c, r, s = shape4
        return (1, (k // self.b1) * (c * r * s // self.b2), self.b1 * self.b2)

    def group_view(self, w4: Tensor) -> Tensor:
        k = w4.shape[0]
        tiles = w4.reshape(k // self.b1, self.b1, -1, self.b2).permute(0, 2, 1, 3)
        return tiles.reshape(1, -1, self.b1 * self.b2)

    def from_group_view(self, t: Tensor, shape4: Sequence[int]) -> Tensor:
        k, c, r, s = self._check_view(t, shape4)
        tiles = t.reshape(k // self.b1, c * r * s // self.b2, self.b1, self.b2)
        return tiles.permute(0, 2, 1, 3).reshape(k, c, r, s)

    def group_label(self, d: int, g: int, shape4: Shape4) -> str:
        i, j = divmod(g, shape4[1] * shape4[2] * shape4[3] // self.b2)
        rows = f"{i * self.b1}..{i * self.b1 + self.b1 - 1}"
        cols = f"{j * self.b2}..{j * self.b2 + self.b2 - 1}"
        return f"block ({i}, {j}) (rows {rows}, columns {cols})"


@dataclass(frozen=True)
class Combined(Structure):
    """combined: kernel-quota, then window inside the surviving kernels (Campfire combined).

    A target ``s`` is split so that ``(1 - s_kq) * (1 - s_win) = 1 - s`` with
    ``1 - s_kq = (1 - s) ** split`` and ``1 - s_win = (1 - s) ** (1 - split)``: ``split`` is the
    fraction of log-density given to kernel-quota (0.5: ``s_kq = s_win = 1 - sqrt(1 - s)``). Each
    part is then rounded to its own quota step (``keep_count``). This split is our reconstruction:
    the Campfire paper (arXiv 2001.03253) does not say how the two targets are chosen.
    The group view is the window one (elements in kernels); ``keep_per_domain`` returns ``(m, n)``:
    kernels kept per filter and elements kept per surviving kernel.
    """

    split: float = 0.5
    name = "combined"
    group = "one element, in two levels: kernels per filter, then elements per surviving kernel"
    domain = "each filter keeps m of C kernels; each surviving kernel keeps n of R*S elements"
    balanced = True
    element_granular = True

    def __post_init__(self) -> None:
        s = self.split
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s <= 1.0:
            raise ConfigError(f"structure combined: expected {_COMBINED_FORM}, got split={s!r}")
        object.__setattr__(self, "split", float(s))

    @classmethod
    def from_params(cls, params: Sequence[str], spec: str) -> Combined:
        if not params:
            return cls()
        try:
            text = params[0] if len(params) == 1 else ""
            split = float(text) if text.isascii() and "_" not in text else math.nan
        except ValueError:
            split = math.nan
        if not 0.0 <= split <= 1.0:
            raise ConfigError(f"structure '{spec}': expected {_COMBINED_FORM}")
        return cls(split)

    @property
    def spec(self) -> str:
        return "combined" if self.split == 0.5 else f"combined:{self.split!r}"

    @property
    def notes(self) -> tuple[str, ...]:
        return (
            f"split {self.split:g}: (1 - s_kq) = (1 - s)^{self.split:g}, (1 - s_win) = "
            f"(1 - s)^{1 - self.split:g} (our reconstruction; the Campfire paper does not give it)",
        )

    @property
    def index_group(self) -> Structure:
        """``kernel``: a group-addressed format stores the kept kernels whole."""
        return Kernel()

    @property
    def quota_levels(self) -> tuple[Structure, ...]:
        """``(kernel-quota, window)``: m kernels per filter, then n elements per kept kernel."""
        return (KernelQuota(), Window())

    def _fits4(self, shape4: Shape4) -> str | None:
        reason = KernelQuota()._fits4(shape4) or Window()._fits4(shape4)
        return None if reason is None else "combined" + reason[reason.index(" needs") :]

    def layout(self, shape4: Shape4) -> tuple[int, int, int]:
        return Window().layout(shape4)

    def group_view(self, w4: Tensor) -> Tensor:
        return Window().group_view(w4)

    def from_group_view(self, t: Tensor, shape4: Sequence[int]) -> Tensor:
        return Window().from_group_view(t, shape4)

    def group_label(self, d: int, g: int, shape4: Shape4) -> str:
        return Window().group_label(d, g, shape4)

    def domain_label(self, d: int, shape4: Shape4) -> str:
        return Window().domain_label(d, shape4)

    def split_sparsity(self, sparsity: float) -> tuple[float, float]:
        """``(s_kq, s_win)`` before rounding, with ``(1 - s_kq) * (1 - s_win) = 1 - sparsity``."""
        density = 1.0 - check_sparsity(sparsity)
        return 1.0 - density**self.split, 1.0 - density ** (1.0 - self.split)

    def keep_per_domain(self, shape: Sequence[int], sparsity: float) -> tuple[int, int]:  # type: ignore[override]
        """``(m, n)``: kernels kept in every filter, elements kept in every surviving kernel."""
        _, c, r, s = self._checked(shape)
        s_kq, s_win = self.split_sparsity(sparsity)
        return keep_count(c, s_kq), keep_count(r * s, s_win)

    def achieved_sparsity(self, shape: Sequence[int], sparsity: float) -> float:
        _, c, r, s = self._checked(shape)
        m, n = self.keep_per_domain(shape, sparsity)
        return (c * r * s - m * n) / (c * r * s)

    def quota_step(self, shape: Sequence[int]) -> float:
        """``1 / (C*R*S)``: one element more or less in every filter (m = 1, n changes by one)."""
        _, c, r, s = self._checked(shape)
        return 1.0 / (c * r * s)

    def tolerance(self, shape: Sequence[int]) -> float:
        """``1/C + 1/(R*S)``: each rounded density is within one of its steps of its target."""
        _, c, r, s = self._checked(shape)
        return 1.0 / c + 1.0 / (r * s)

    def max_sparsity(self, shape: Sequence[int]) -> float:
        _, c, r, s = self._checked(shape)
        return 1.0 - 1.0 / (c * r * s)

    def mask(self, w: Tensor, sparsity: float, score: str | Score = "l1") -> Tensor:
        """Kernel-quota at ``s_kq`` on whole kernels AND window at ``s_win`` inside each kernel."""
        s_kq, s_win = self.split_sparsity(sparsity)
        self._checked(w.shape)
        return KernelQuota().mask(w, s_kq, score) & Window().mask(w, s_win, score)
