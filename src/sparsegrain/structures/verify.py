"""Check that a mask, or the zeros of a weight, really have a structure; and measure sparsity.

``verify(t, structure, is_mask=True)`` checks a mask (True / non-zero = kept):
  1. the structure fits ``t``'s shape, and a non-bool mask holds only 0 and 1;
  2. every group is entirely kept or entirely pruned;
  3. balanced structures (window, kernel-quota, nm): every domain keeps the same number of groups,
     ``keep`` if given, else the most common count (the smallest one on a tie); combined (two
     ``quota_levels``): every filter keeps the same number of kernels and every kept kernel the
     same number of elements; layer-domain structures: the layer keeps ``keep`` groups, when
     ``keep`` is given.
``verify(t, structure, is_mask=False)`` checks a weight's zeros: a group with any non-zero counts
as kept (so any pattern is covered by some mask, and there is no group check), and every domain
keeps at most ``keep`` groups; with no ``keep`` only a structure with a ``fixed_sparsity`` has a
quota of its own (nm: n per M).
``keep`` is groups per domain (for layer-domain structures, groups in the layer), or ``(m, n)``
for combined.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .core import Structure, as_4d
from .names import parse_structure


class _Report:
    """Violation lines, at most ``limit`` of them written out, the rest counted."""

    def __init__(self, limit: int):
        self.limit, self.lines, self.omitted = limit, [], 0

    def add(self, where: Tensor, line: Callable[..., str]) -> None:
        """One line per row of ``where`` (``nonzero()`` indices), built only while under limit."""
        room = max(0, self.limit - len(self.lines))
        self.lines += [line(*row) for row in where[:room].tolist()]
        self.omitted += max(0, where.shape[0] - room)

    def result(self) -> list[str]:
        more = [f"... and {self.omitted} more violations"] if self.omitted else []
        return self.lines + more


def _common(counts: Tensor) -> int:
    """The most frequent value of a 1-D int tensor, the smallest on a tie."""
    return int(torch.bincount(counts).argmax())


def _domains(
    rep: _Report,
    counts: Tensor,
    of: int,
    label: Callable[[int], str],
    is_mask: bool,
    expected: int | None,
    prefix: str,
) -> None:
    """Masks: every domain keeps ``expected`` groups. Weights: none keeps more than ``expected``."""
    if expected is None or counts.numel() == 0:
        return
    if is_mask:
        where = (counts != expected).nonzero()
        rep.add(
            where,
            lambda d: f"{prefix}: {label(d)} keeps {int(counts[d])} of {of}, expected {expected}",
        )
    else:
        where = (counts > expected).nonzero()
        rep.add(
            where,
            lambda d: (
                f"{prefix}: {label(d)} has {int(counts[d])} non-zero of {of}, "
                f"at most {expected} allowed"
            ),
        )


def _check_groups(rep: _Report, st: Structure, occ4: Tensor) -> None:
    """Masks: every group of ``st`` is entirely kept or entirely pruned."""
    shape4 = tuple(occ4.shape)
    e = st.layout(shape4)[2]
    counts = st.group_view(occ4).sum(-1)  # (D, G) kept elements per group
    partial = ((counts > 0) & (counts < e)).nonzero()
    rep.add(
        partial,
        lambda d, i: (
            f"{st.spec}: {st.group_label(d, i, shape4)} is partly kept "
            f"({int(counts[d, i])} of {e} elements)"
        ),
    )


def _check_level(
    rep: _Report, st: Structure, level: Structure, occ4: Tensor, is_mask: bool, keep, inner: bool
) -> None:
    """The per-domain counts of one of ``st.quota_levels``; ``inner``: not the outermost level."""
    shape4 = tuple(occ4.shape)
    g = level.layout(shape4)[1]
    per_domain = (level.group_view(occ4).sum(-1) > 0).sum(1)
    # An inner level's domains are the outer level's groups: only the kept ones have a quota.
    live = per_domain > 0 if inner else torch.ones_like(per_domain, dtype=torch.bool)
    if keep is None and is_mask and st.balanced and bool(live.any()):
        keep = _common(per_domain[live])
    if keep is None and not is_mask and level.fixed_sparsity is not None:
        keep = level.keep_per_domain(shape4, level.fixed_sparsity)  # nm: n of every M
    if keep is not None and is_mask and inner:
        per_domain = torch.where(live, per_domain, keep)
    _domains(rep, per_domain, g, lambda d: level.domain_label(d, shape4), is_mask, keep, st.spec)


def verify(
    t: Tensor,
    structure: str | Structure,
    *,
    is_mask: bool,
    keep: int | tuple[int, int] | None = None,
    max_report: int = 20,
) -> list[str]:
    """Human-readable structure violations of a mask or a weight; ``[]`` means it conforms.

    See the module docstring for exactly what is checked. At most ``max_report`` violations are
    written out; a last line counts the rest.
    """
    st = parse_structure(structure)
    reason = st.fits(t.shape)
    if reason is not None:
        return [reason]
    levels = st.quota_levels  # keep: one count per level, a tuple when there are several
    keeps = keep if isinstance(keep, tuple) else (keep,) * len(levels)
    several = len(levels) > 1
    if (keep is not None and several != isinstance(keep, tuple)) or len(keeps) != len(levels):
        raise ValueError(f"keep: expected (m, n) for combined, an int otherwise, got {keep!r}")
    rep = _Report(max_report)
    if is_mask and t.dtype != torch.bool:
        bad = int(((t != 0) & (t != 1)).sum())
        if bad:
            rep.lines.append(f"{st.spec}: mask holds {bad} entries that are neither 0 nor 1")
    occ4 = as_4d(t.detach() != 0)
    if is_mask:
        _check_groups(rep, st, occ4)
    for i, (level, k) in enumerate(zip(levels, keeps)):
        _check_level(rep, st, level, occ4, is_mask, k, inner=i > 0)
    return rep.result()


def sparsity(t: Tensor) -> float:
    """Fraction of zeros (False) in a mask or weight; 0.0 for an empty tensor.

    Computed as ``(numel - nonzero) / numel``, one correctly rounded division, so it equals
    ``Structure.achieved_sparsity`` exactly (both are the same fraction).
    """
    n = t.numel()
    return 0.0 if n == 0 else (n - int(torch.count_nonzero(t))) / n
