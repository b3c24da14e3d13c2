"""Sparsity and learning-rate schedules: pure functions of the clock (in epochs, fractional)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def cubic_sparsity(t: float, *, initial: float, final: float, start: float, end: float) -> float:
    """Gradual pruning target of Zhu & Gupta 2017 (arXiv 1710.01878, eq. 1).

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))**3`` for ``t0 <= t <= t0 + n dt``; here
    the clock ``t`` is in epochs, ``t0 = start`` and ``t0 + n dt = end``. Before ``start`` the
    target is 0 (dense training); after ``end`` it is ``final``. ``start == end`` is a one-shot
    jump.
    """
    if t < start:
        return 0.0
    if t >= end:
        return final
    frac = (t - start) / (end - start)
    return final + (initial - final) * (1.0 - frac) ** 3


def lr_at(
    t: float,
    *,
    base_lr: float,
    epochs: float,
    schedule: str = "cosine",
    warmup_epochs: float = 0.0,
    step_size: float = 30.0,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    min_lr: float = 0.0,
    restart_at: float | None = None,
    restart_lr: float | None = None,
) -> float:
    """Learning rate at clock ``t`` (epochs). Pure: no optimizer, no counters.

    ``schedule``: ``constant``, ``step`` (times ``gamma`` every ``step_size`` epochs),
    ``multistep`` (times ``gamma`` at each of ``milestones``) or ``cosine`` (from ``base_lr`` to
    ``min_lr`` over ``epochs``, Loshchilov & Hutter 2017, eq. 5 without restarts). With
    ``warmup_epochs`` the rate is scaled linearly from 0 at ``t = 0`` up to the scheduled value at
    ``t = warmup_epochs`` (Goyal et al. 2017, sec. 2.2).

    ``restart_at``: from that epoch on, the schedule starts again from ``restart_lr`` (default
    ``base_lr``) over the remaining ``epochs - restart_at`` epochs. This is the learning-rate
    restart (or, with ``restart_lr`` above the value reached by then, a boost) at mask freeze
    studied by Campfire (arXiv 2001.03253, sec. 4).
    """
    if restart_at is not None and t >= restart_at:
        return lr_at(
            t - restart_at,
            base_lr=base_lr if restart_lr is None else restart_lr,
            epochs=max(epochs - restart_at, 1e-12),
            schedule=schedule,
            step_size=step_size,
            milestones=[m - restart_at for m in milestones if m > restart_at],
            gamma=gamma,
            min_lr=min_lr,
        )
    if schedule == "constant":
        lr = base_lr
    elif schedule == "step":
        lr = base_lr * gamma ** math.floor(t / step_size)
    elif schedule == "multistep":
        lr = base_lr * gamma ** sum(1 for m in milestones if t >= m)
    elif schedule == "cosine":
        frac = min(max(t / epochs, 0.0), 1.0)
        lr = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * frac))
    else:
        raise ValueError(f"unknown schedule '{schedule}'; choose from: {', '.join(LR_SCHEDULES)}")
    if warmup_epochs > 0 and t < warmup_epochs:
        lr *= t / warmup_epochs
    return lr


LR_SCHEDULES = ("constant", "step", "multistep", "cosine")
