"""The contract every structure follows, the 4-D weight view, scores and the one selection rule.

A weight is viewed as 4-D ``(K, C, R, S)`` = (out channels, in channels per group, kernel h,
kernel w): Linear ``(K, C)`` is ``(K, C, 1, 1)``, Conv1d ``(K, C, S)`` is ``(K, C, 1, S)``.
A structure maps that view to a ``(D, G, E)`` tensor by a pure reshape/permute: ``D`` balance
domains, ``G`` groups per domain, ``E`` elements per group. Masks come from one rule: score each
group, keep the same number of top-scoring groups in every domain (``select_top``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..core.errors import ConfigError
from ..core.quantile import DIRECT_SELECT, select_order_statistics
from ..core.registry import Registry

Shape4 = tuple[int, int, int, int]


# -- the 4-D view ---------------------------------------------------------------------------------


def shape_4d(shape: Sequence[int]) -> Shape4:
    """``(K, C)`` -> ``(K, C, 1, 1)``; ``(K, C, S)`` -> ``(K, C, 1, S)``; 4-D as is.

    Raises ValueError for any other rank. ConvTranspose weights are ``(in, out/groups, ...)``: a
    caller that wants K to be the output axis must swap dims 0 and 1 first.
    """
    dims = tuple(int(d) for d in shape)
    if len(dims) == 2:
        return (dims[0], dims[1], 1, 1)
    if len(dims) == 3:
        return (dims[0], dims[1], 1, dims[2])
    if len(dims) == 4:
        return dims  # type: ignore[return-value]
    raise ValueError(
        "weight must be 2-D (Linear), 3-D (Conv1d) or 4-D (Conv2d)\n"
        f"  expected: (K, C), (K, C, S) or (K, C, R, S)\n  got: {len(dims)}-D shape {dims}"
    )


def as_4d(w: Tensor) -> Tensor:
    """View ``w`` as ``(K, C, R, S)`` (see ``shape_4d``); a view, not a copy."""
    return w.reshape(shape_4d(w.shape))


def from_4d(w4: Tensor, shape: Sequence[int]) -> Tensor:
    """Inverse of ``as_4d``: reshape a ``(K, C, R, S)`` tensor back to the original ``shape``."""
    if tuple(w4.shape) != shape_4d(shape):
        raise ValueError(
            f"4-D tensor does not match shape {tuple(shape)}\n"
            f"  expected: {shape_4d(shape)}\n  got: {tuple(w4.shape)}"
        )
    return w4.reshape(tuple(shape))


# -- scores ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """A group score: ``fn(grouped (D, G, E)) -> (D, G)``, larger = more important.

    ``size_exponent`` is used by global selection to compare groups of different sizes: a score is
    divided by ``E ** size_exponent`` (1 for l1 -> mean magnitude, 0.5 for l2 -> RMS).
    """

    fn: Callable[[Tensor], Tensor]
    size_exponent: float = 1.0

    def __call__(self, grouped: Tensor) -> Tensor:
        return self.fn(grouped)


def _float(t: Tensor) -> Tensor:
    # Half-precision sums of many |w| can overflow; score in at least float32.
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _l1(grouped: Tensor) -> Tensor:
    return _float(grouped).abs().sum(-1)


def _l2(grouped: Tensor) -> Tensor:
    return _float(grouped).pow(2).sum(-1).sqrt()


SCORES = Registry("score")
SCORES.register("l1", Score(_l1, 1.0), help="sum of |w| over the group (Mao, Campfire)")
SCORES.register(
    "l2", Score(_l2, 0.5), help="sqrt of the sum of w^2 over the group (StructADMM projection)"
)


def register_score(
    name: str, fn: Callable[[Tensor], Tensor], *, size_exponent: float = 1.0, help: str = ""
) -> None:
    """Add a score ``fn(grouped (D, G, E)) -> (D, G)`` under ``name`` (see ``Score``)."""
    SCORES.register(name, Score(fn, size_exponent), help=help or (fn.__doc__ or name))


def get_score(score: str | Score | Callable[[Tensor], Tensor]) -> Score:
    """A ``Score`` from a registered name, a ``Score``, or a bare callable (size exponent 1)."""
    if isinstance(score, Score):
        return score
    if callable(score):
        return Score(score, 1.0)
    obj = SCORES.get(score)
    return obj if isinstance(obj, Score) else Score(obj, 1.0)


def score_groups(grouped: Tensor, score: str | Score | Callable[[Tensor], Tensor]) -> Tensor:
    """Apply ``score`` to a ``(D, G, E)`` view and check it returns a finite ``(D, G)`` tensor."""
    out = get_score(score)(grouped)
    if tuple(out.shape) != tuple(grouped.shape[:2]):
        raise ValueError(
            f"score returned the wrong shape\n  expected: {tuple(grouped.shape[:2])}\n"
            f"  got: {tuple(out.shape)}"
        )
    if torch.isnan(out).any():
        raise ValueError("group scores contain NaN (the weight has NaN or inf values)")
    return out


# -- the selection rule ---------------------------------------------------------------------------


def check_sparsity(sparsity: float) -> float:
    """Return ``sparsity`` as a float in [0, 1), else raise ValueError."""
    s = float(sparsity)
    if not 0.0 <= s < 1.0:  # also rejects NaN
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return s


def keep_count(groups: int, sparsity: float, min_keep: int = 1) -> int:
    """Groups kept per domain: ``groups - round(sparsity * groups)``, at least ``min_keep``.

    ``round`` is Python's (half to even), so the achieved sparsity is within half a step
    (``1/groups``) of the target, except where ``min_keep`` binds, and it never decreases as the
    target grows. ``min_keep >= 1`` means no domain, and so no layer, is ever entirely zeroed.
    """
    s = check_sparsity(sparsity)
    return max(min_keep, groups - min(round(s * groups), groups))


def select_top(scores: Tensor, keep: int) -> Tensor:
    """Bool ``(D, G)``: the ``keep`` highest scores in every row.

    Deterministic: exactly the first ``keep`` of a stable descending sort, so among equal scores
    the lower index is kept, found by selection instead of a sort (linear time, which matters
    for ``fine``, one group per weight): ``t`` is each row's ``keep``-th largest score
    (``kthvalue``), every score above ``t`` is kept, and the scores equal to ``t`` fill the rest
    in index order.
    """
    groups = scores.shape[1]
    if keep >= groups:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if keep <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if scores.shape[0] == 1 and groups > DIRECT_SELECT and not scores.isnan().any():
        flat = scores.reshape(-1)  # one large domain (fine, vector, kernel on a big layer)
        t = select_order_statistics(flat, groups - keep, groups - keep)[0]
        above = flat > t
        need = keep - int(torch.count_nonzero(above))
        tied = (flat == t).nonzero().reshape(-1)  # in index order; usually one or a few
        above[tied[:need]] = True
        return above.reshape(1, groups)
    t = torch.kthvalue(scores, groups - keep + 1, dim=1, keepdim=True).values
    above = scores > t
    tied = scores == t
    need = keep - above.sum(1, keepdim=True)
    return above | (tied & (torch.cumsum(tied, 1) <= need))


# -- the contract ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Structure:
    """A group (zeroed and scored together) and a balance domain (same number kept in each).

    Subclasses set ``name``, ``group``/``domain`` (words for help and messages) and implement
    ``layout`` / ``group_view`` / ``from_group_view``; everything else follows from those. What
    storage, file formats, cost models, BatchNorm masking and coupling need to know beyond the
    view is here too (``whole_filters``, ``element_granular``, ``index_group``,
    ``quota_levels``), so none of them names a structure.
    """

    name: ClassVar[str] = ""
    group: ClassVar[str] = ""  # what one group is, for describe()
    domain: ClassVar[str] = "the layer"
    balanced: ClassVar[bool] = False  # True when a domain is smaller than the layer
    whole_filters: ClassVar[bool] = False
    """True when a group is a whole filter (output channel) ``W[k,:,:,:]``: every dropped group
    empties one output channel, which BatchNorm masking and coupled filter masks build on."""
    element_granular: ClassVar[bool] = False
    """True when the finest choice the structure makes is about single elements (fine, window,
    nm, combined: window inside the kept kernels), so a sparse format needs one index per kept
    element; False when all elements of a kept group share one index (every coarse structure)."""

    @classmethod
    def from_params(cls, params: Sequence[str], spec: str) -> Structure:
        """Build from the ``:``-separated parameters of a spec (none for most structures)."""
        if params:
            raise ConfigError(f"structure '{cls.name}' takes no parameters, got '{spec}'")
        return cls()

    @property
    def spec(self) -> str:
        """The canonical string ``parse_structure`` turns back into this structure."""
        return self.name

    @property
    def fixed_sparsity(self) -> float | None:
        """The sparsity the structure itself implies (``1 - n/m`` for N:M), else None."""
        return None

    @property
    def notes(self) -> tuple[str, ...]:
        """Lines ``describe`` adds after the group and domain: what the parameters imply."""
        return ()

    # what storage and deployment need -----------------------------------------------------------

    @property
    def index_group(self) -> Structure | None:
        """The structure whose groups a group-addressed format keeps whole: one index (or bit)
        per kept group, all its ``E`` elements stored, zeros included; groups taken in its
        ``group_view`` order over the layer. The structure itself for a coarse structure;
        ``kernel`` for kernel-quota and combined (their kept units are kernels); None when a group
        is one element (fine, window, nm): the element-wise formats (bitmap, csr) cover that."""
        return None if self.element_granular else self

    @property
    def quota_levels(self) -> tuple[Structure, ...]:
        """The structures whose per-domain counts describe a mask, outermost first.

        ``(self,)`` for a one-level structure (a layer-domain one has one domain, the layer);
        combined is ``(kernel-quota, window)``: kernels kept per filter, then elements kept per
        kernel. Level ``i + 1``'s domains are level ``i``'s groups in their order, and the ``E``
        elements of a level-``i`` group are level ``i + 1``'s ``(G, E)`` of that domain,
        row-major; so a mask is the groups each level keeps inside those the level above kept,
        and the last level's groups are the structure's own.
        """
        return (self,)

    # shape rules --------------------------------------------------------------------------------

    def fits(self, shape: Sequence[int]) -> str | None:
        """None if the structure applies to a weight of ``shape``, else the reason it does not."""
        try:
            shape4 = shape_4d(shape)
        except ValueError:
            return f"{self.spec} needs a 2-D, 3-D or 4-D weight, got shape {tuple(shape)}"
        return self._fits4(shape4)

    def _fits4(self, shape4: Shape4) -> str | None:
        return None

    def _checked(self, shape: Sequence[int]) -> Shape4:
        reason = self.fits(shape)
        if reason is not None:
            raise ValueError(f"structure does not fit weight shape {tuple(shape)}: {reason}")
        return shape_4d(shape)

    def layout(self, shape4: Shape4) -> tuple[int, int, int]:
        """``(D, G, E)``: domains, groups per domain, elements per group."""
        raise NotImplementedError

    def num_groups(self, shape: Sequence[int]) -> int:
        """Total number of groups in a weight of ``shape`` (``D * G``)."""
        d, g, _ = self.layout(self._checked(shape))
        return d * g

    def quota_step(self, shape: Sequence[int]) -> float:
        """Smallest change in achievable sparsity: ``1/G`` (= 1/num_groups when D = 1)."""
        return 1.0 / self.layout(self._checked(shape))[1]

    def tolerance(self, shape: Sequence[int]) -> float:
        """Bound on ``|achieved - target|`` for targets up to ``fixed_sparsity`` (if any)."""
        return self.quota_step(shape)

    def min_keep(self, shape4: Shape4) -> int:
        return 1

    def keep_per_domain(self, shape: Sequence[int], sparsity: float) -> int:
        """Groups kept in every domain at ``sparsity`` (see ``keep_count``)."""
        shape4 = self._checked(shape)
        return keep_count(self.layout(shape4)[1], sparsity, self.min_keep(shape4))

    def achieved_sparsity(self, shape: Sequence[int], sparsity: float) -> float:
        """The exact sparsity ``mask`` reaches on ``shape`` for a target ``sparsity``."""
        groups = self.layout(self._checked(shape))[1]
        return (groups - self.keep_per_domain(shape, sparsity)) / groups

    def max_sparsity(self, shape: Sequence[int]) -> float:
        """The highest sparsity reachable (a mask keeps ``min_keep`` groups per domain)."""
        shape4 = self._checked(shape)
        groups = self.layout(shape4)[1]
        return (groups - self.min_keep(shape4)) / groups

    # views --------------------------------------------------------------------------------------

    def group_view(self, w4: Tensor) -> Tensor:
        """``(K, C, R, S)`` -> ``(D, G, E)`` by reshape/permute only."""
        raise NotImplementedError

    def from_group_view(self, t: Tensor, shape4: Sequence[int]) -> Tensor:
        """Exact inverse of ``group_view``: ``(D, G, E)`` -> ``(K, C, R, S)``."""
        raise NotImplementedError

    def _check_view(self, t: Tensor, shape4: Sequence[int]) -> Shape4:
        shape4 = tuple(int(d) for d in shape4)
        want = self.layout(shape4)  # type: ignore[arg-type]
        if tuple(t.shape) != want:
            raise ValueError(
                f"{self.spec}: group view does not match shape {shape4}\n"
                f"  expected: {want} (D, G, E)\n  got: {tuple(t.shape)}"
            )
        return shape4  # type: ignore[return-value]

    def expand(self, group_mask: Tensor, shape4: Sequence[int]) -> Tensor:
        """Broadcast a per-group ``(D, G)`` mask to the 4-D weight shape, in fresh memory.

        Contiguous matters: the broadcast alone is a stride-0 view, where writing one element would
        write a whole group.
        """
        d, g, e = self.layout(tuple(shape4))  # type: ignore[arg-type]
        out = self.from_group_view(group_mask.reshape(d, g, 1).expand(d, g, e), shape4)
        return out.clone(memory_format=torch.contiguous_format)

    # labels for verify() messages ---------------------------------------------------------------

    def group_label(self, d: int, g: int, shape4: Shape4) -> str:
        raise NotImplementedError

    def domain_label(self, d: int, shape4: Shape4) -> str:
        return "layer"

    # the mask -----------------------------------------------------------------------------------

    def mask(self, w: Tensor, sparsity: float, score: str | Score = "l1") -> Tensor:
        """Bool mask of ``w``'s shape (True = keep): the top groups of every domain by ``score``."""
        check_sparsity(sparsity)
        shape4 = self._checked(w.shape)
        scores = score_groups(self.group_view(as_4d(w.detach())), score)
        keep = self.keep_per_domain(w.shape, sparsity)
        return self.expand(select_top(scores, keep), shape4).reshape(w.shape)


def unravel(index: int, dims: Sequence[int]) -> tuple[int, ...]:
    """Row-major multi-index of flat ``index`` in ``dims``."""
    out = []
    for d in reversed(dims):
        out.append(index % d)
        index //= d
    return tuple(reversed(out))
