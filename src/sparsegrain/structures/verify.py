"""Check that a mask, or the zeros of a weight, really have a structure; and measure sparsity.

``verify(t, structure, is_mask=True)`` checks a mask (True / non-zero = kept):
  1. the structure fits ``t``'s shape, and a non-bool mask holds only 0 and 1;
  2. every group is entirely kept or entirely pruned;
  3. balanced structures (window, kernel-quota, nm): every domain keeps the same number of groups,
     ``keep`` if given, else the most common count (the smallest one on a tie); combined: every
     filter keeps the same number of kernels and every kept kernel the same number of elements;
     layer-domain structures: the layer keeps ``keep`` groups, when ``keep`` is given.
``verify(t, structure, is_mask=False)`` checks a weight's zeros: a group with any non-zero counts
as kept (so any pattern is covered by some mask, and there is no group check), and every domain
keeps at most ``keep`` groups; with no ``keep`` only nm has a quota of its own (n per M).
``keep`` is groups per domain (for layer-domain structures, groups in the layer), or ``(m, n)``
for combined.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .core import Structure, as_4d
from .names import parse_structure
from .parametric import NM, Combined


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


def _check_grouped(rep: _Report, st: Structure, occ4: Tensor, is_mask: bool, keep) -> None:
    shape4 = tuple(occ4.shape)
    _, g, e = st.layout(shape4)
    counts = st.group_view(occ4).sum(-1)  # (D, G) kept elements per group
    if is_mask:
        partial = ((counts > 0) & (counts < e)).nonzero()
        rep.add(
            partial,
            lambda d, i: (
                f"{st.spec}: {st.group_label(d, i, shape4)} is partly kept "
                f"({int(counts[d, i])} of {e} elements)"
            ),
        )
    per_domain = (counts > 0).sum(1)
    if keep is None and is_mask and st.balanced:
        keep = _common(per_domain)
    if keep is None and not is_mask and isinstance(st, NM):
        keep = st.n
    _domains(rep, per_domain, g, lambda d: st.domain_label(d, shape4), is_mask, keep, st.spec)


def _check_combined(rep: _Report, st: Combined, occ4: Tensor, is_mask: bool, keep) -> None:
    k, c, r, s = occ4.shape
    m, n = keep if keep is not None else (None, None)
    per_kernel = occ4.reshape(k, c, r * s).sum(-1)  # (K, C) kept elements per kernel
    per_filter = (per_kernel > 0).sum(1)
    alive = per_kernel.reshape(-1)[per_kernel.reshape(-1) > 0]
    if is_mask and m is None:
        m = _common(per_filter)
        n = _common(alive) if alive.numel() else None
    _domains(rep, per_filter, c, lambda d: f"filter {d}", is_mask, m, st.spec)
    if n is None:
        return
    # Window level: only kernels that survived the kernel quota are checked.
    flat = per_kernel.reshape(-1).clone()
    if is_mask:
        flat[flat == 0] = n
    _domains(rep, flat, r * s, lambda d: f"kernel {divmod(d, c)}", is_mask, n, st.spec)


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
    if isinstance(st, Combined) != isinstance(keep, tuple) and keep is not None:
        raise ValueError(f"keep: expected (m, n) for combined, an int otherwise, got {keep!r}")
    rep = _Report(max_report)
    if is_mask and t.dtype != torch.bool:
        bad = int(((t != 0) & (t != 1)).sum())
        if bad:
            rep.lines.append(f"{st.spec}: mask holds {bad} entries that are neither 0 nor 1")
    occ4 = as_4d(t.detach() != 0)
    if isinstance(st, Combined):
        _check_combined(rep, st, occ4, is_mask, keep)
    else:
        _check_grouped(rep, st, occ4, is_mask, keep)
    return rep.result()


def sparsity(t: Tensor) -> float:
    """Fraction of zeros (False) in a mask or weight; 0.0 for an empty tensor.

    Computed as ``(numel - nonzero) / numel``, one correctly rounded division, so it equals
    ``Structure.achieved_sparsity`` exactly (both are the same fraction).
    """
    n = t.numel()
    return 0.0 if n == 0 else (n - int(torch.count_nonzero(t))) / n
