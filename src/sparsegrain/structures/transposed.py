"""A structure applied to a weight stored transposed: ``(in, out)`` instead of ``(out, in)``.

Hugging Face's ``Conv1D`` (GPT-2's attention and MLP projections) computes ``y = x @ W + b`` with
``W`` of shape ``(in, out)``. Its output units are columns of the stored tensor, so every
structure must see ``W.T`` to keep its meaning (``filter`` and ``neuron``: an output unit,
``channel``: an input, ``nm``: M consecutive inputs of one output). ``Transposed(inner)`` is
``inner`` on that view, with masks, views and shapes in the stored ``(in, out)`` layout, so the
masks, parametrizations and optimizer state of such a layer need nothing special.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from .core import Score, Shape4, Structure


def _swap(shape: Sequence[int]) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    return (dims[1], dims[0], *dims[2:])


@dataclass(frozen=True)
class Transposed(Structure):
    """``inner`` on the ``(out, in)`` view of a 2-D weight stored ``(in, out)``."""

    inner: Structure = None  # type: ignore[assignment]
    # Axis 0 of the stored tensor is the input: nothing that reads filters off axis 0 (BatchNorm
    # masks, coupled filters) may treat a group as a filter there.
    whole_filters = False

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def group(self) -> str:  # type: ignore[override]
        return self.inner.group

    @property
    def domain(self) -> str:  # type: ignore[override]
        return self.inner.domain

    @property
    def balanced(self) -> bool:  # type: ignore[override]
        return self.inner.balanced

    @property
    def element_granular(self) -> bool:  # type: ignore[override]
        return self.inner.element_granular

    @property
    def spec(self) -> str:
        return self.inner.spec

    @property
    def fixed_sparsity(self) -> float | None:
        return self.inner.fixed_sparsity

    @property
    def notes(self) -> tuple[str, ...]:
        return (*self.inner.notes, "on the (out, in) view of a weight stored (in, out)")

    @property
    def index_group(self) -> Structure | None:
        inner = self.inner.index_group
        return None if inner is None else Transposed(inner)

    @property
    def quota_levels(self) -> tuple[Structure, ...]:
        return tuple(Transposed(level) for level in self.inner.quota_levels)

    def fits(self, shape: Sequence[int]) -> str | None:
        if len(shape) != 2:
            return f"{self.spec} on a transposed weight needs 2-D (in, out), got {tuple(shape)}"
        return self.inner.fits(_swap(shape))

    def layout(self, shape4: Shape4) -> tuple[int, int, int]:
        return self.inner.layout(_swap(shape4))  # type: ignore[arg-type]

    def min_keep(self, shape4: Shape4) -> int:
        return self.inner.min_keep(_swap(shape4))  # type: ignore[arg-type]

    def keep_per_domain(self, shape: Sequence[int], sparsity: float):  # type: ignore[override]
        self._checked(shape)
        return self.inner.keep_per_domain(_swap(shape), sparsity)

    def achieved_sparsity(self, shape: Sequence[int], sparsity: float) -> float:
        self._checked(shape)
        return self.inner.achieved_sparsity(_swap(shape), sparsity)

    def quota_step(self, shape: Sequence[int]) -> float:
        self._checked(shape)
        return self.inner.quota_step(_swap(shape))

    def tolerance(self, shape: Sequence[int]) -> float:
        self._checked(shape)
        return self.inner.tolerance(_swap(shape))

    def max_sparsity(self, shape: Sequence[int]) -> float:
        self._checked(shape)
        return self.inner.max_sparsity(_swap(shape))

    def group_view(self, w4: Tensor) -> Tensor:
        return self.inner.group_view(w4.transpose(0, 1))

    def from_group_view(self, t: Tensor, shape4: Sequence[int]) -> Tensor:
        return self.inner.from_group_view(t, _swap(shape4)).transpose(0, 1)

    def group_label(self, d: int, g: int, shape4: Shape4) -> str:
        return self.inner.group_label(d, g, _swap(shape4))  # type: ignore[arg-type]

    def domain_label(self, d: int, shape4: Shape4) -> str:
        return self.inner.domain_label(d, _swap(shape4))  # type: ignore[arg-type]

    def mask(self, w: Tensor, sparsity: float, score: str | Score = "l1") -> Tensor:
        self._checked(w.shape)
        return self.inner.mask(w.t(), sparsity, score).t().contiguous()
