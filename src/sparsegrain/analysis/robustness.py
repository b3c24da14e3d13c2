"""Adversarial robustness: top-1 accuracy under FGSM and PGD (L-inf), sparse vs dense.

Threat model, in pixel space. Our loaders yield normalized batches ``x = (p - mean) / std`` of
images ``p`` in ``[0, 1]``. Epsilon is measured in pixels (``8/255`` means 8 grey levels), never
in normalized units: the adversary may move every pixel by at most ``eps`` and the attacked image
must stay an image, ``p + delta`` in ``[0, 1]``. With a per-channel ``std`` an epsilon taken in
normalized units would be a different ball for every channel and every dataset, and numbers
could not be compared with the literature. We optimise ``delta`` in pixel units directly and feed
the model ``x + delta / std`` (which is ``(p + delta - mean) / std``), so ``delta = 0`` gives the
model exactly the clean batch.

- FGSM (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples",
  ICLR 2015, section 4): ``delta = eps * sign(grad_p L(theta, p, y))``, then clipped so that
  ``p + delta`` stays in ``[0, 1]``. Accuracy is that of the one FGSM image per sample.
- PGD (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
  ICLR 2018, section 2.1): ``steps`` times ``delta <- Proj(delta + alpha * sign(grad))``, where
  ``Proj`` is the exact projection onto the ball intersected with the valid image range (both are
  boxes, so it is an elementwise clamp to ``[max(-eps, -p), min(eps, 1 - p)]``). With
  ``random_start`` the walk starts at a uniform point of the ball, as in their experiments. The
  default ``alpha = 2.5 * eps / steps`` is the usual choice that lets the walk cross the ball
  from edge to edge with room to spare. A sample counts as broken when any point the walk visits
  (the start included) is misclassified: each is a valid adversarial input, so this is what the
  attack found, and never weaker than scoring the last iterate alone.

The gradient sign with respect to ``p`` equals the one with respect to ``x`` (``std > 0``); the
loss is summed over the batch so tiny per-sample gradients do not underflow to a zero sign.

The model is attacked in eval mode (BN running statistics, no dropout) with ``requires_grad`` off
on every parameter; both are restored afterwards, and no parameter gets a ``.grad``. Random
starts come from a generator seeded with ``(seed, batch index)``, so a call is a pure function of
the weights, the data and ``seed``, and does not depend on which other epsilons were asked for.
Only the model's weights are read, never the method that produced them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import ConfigError, unknown_name
from ..core.outputs import logits_of
from ..core.tables import format_table
from ..data.catalog import DATASETS, NORMALIZE
from ..data.loader import seeded_generator

ATTACKS = ("fgsm", "pgd")

# Per-channel pixel mean and std of the built-in datasets. The loaders pass these to
# ``Normalize`` inline in ``sparsegrain.data`` (its ``_register`` calls); a test checks that the
# two stay equal. Synthetic and image-folder data use importable constants.


def dataset_norm(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel, in pixel units, that the loaders of dataset ``name`` use."""
    key = DATASETS.canonical(name)  # aliases; unknown names fail with the choices
    if key not in NORMALIZE:
        raise ConfigError(
            f"no normalization constants known for dataset '{key}'; pass mean= and std= "
            f"explicitly, or use loader_norm(loader)"
        )
    return tuple(NORMALIZE[key].mean), tuple(NORMALIZE[key].std)


def loader_norm(loader) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` read from a loader of ``sparsegrain.data`` (its ``normalize`` attribute)."""
    norm = getattr(loader, "normalize", None)
    if norm is None or not hasattr(norm, "mean") or not hasattr(norm, "std"):
        raise ConfigError(
            "the loader does not say how it normalizes (no .normalize with mean and std); "
            "pass mean= and std= (pixel units per channel), e.g. from dataset_norm(name)"
        )
    return tuple(norm.mean), tuple(norm.std)


def _batches(loader: Iterable, max_batches: int | None = None, progress: bool = False, desc=""):
    """The loader's first ``max_batches`` ``(x, y)`` batches (all if None), with a tqdm bar."""
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ConfigError(f"max_batches must be an integer >= 1 or None, got {max_batches!r}")
    it = loader if max_batches is None else itertools.islice(loader, max_batches)
    if not progress:
        return it
    from tqdm import tqdm

    total = len(loader) if hasattr(loader, "__len__") else None
    if total is not None and max_batches is not None:
        total = min(total, max_batches)
    return tqdm(it, total=total, desc=desc, leave=False, mininterval=1.0, dynamic_ncols=True)


def _model_device(model: nn.Module) -> torch.device:
    t = next(itertools.chain(model.parameters(), model.buffers()), None)
    return t.device if t is not None else torch.device("cpu")


@torch.no_grad()
def top1(model: nn.Module, loader: Iterable, max_batches: int | None = None) -> float:
    """Clean top-1 accuracy (percent) in eval mode over the first ``max_batches`` batches."""
    was_training = model.training
    model.eval()
    device = _model_device(model)
    correct = n = 0
    try:
        for x, y in _batches(loader, max_batches):
            x, y = x.to(device), y.to(device)
            correct += int((logits_of(model(x)).argmax(1) == y).sum())
            n += len(y)
    finally:
        model.train(was_training)
    return 100.0 * correct / max(n, 1)


@contextmanager
def _attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, no parameter gradients, autograd on for the input; all restored on exit."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _channel_stats(values: Sequence[float], field: str, x: Tensor) -> Tensor:
    """``values`` (one per channel, or one for all) as a ``(1, C, 1, 1)`` tensor like ``x``."""
    c = x.shape[1]
    t = torch.as_tensor(values, dtype=x.dtype, device=x.device).flatten()
    if t.numel() not in (1, c):
        raise ValueError(
            f"{field} must have one value per input channel (or one for all)\n"
            f"  expected: 1 or {c} values\n  got: {t.numel()} ({list(values)})"
        )
    return t.expand(c).reshape(1, c, 1, 1)


def _clamp(delta: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    return torch.minimum(torch.maximum(delta, lo), hi)


def _fgsm(model: nn.Module, x: Tensor, y: Tensor, std: Tensor, lo, hi, eps: float) -> Tensor:
    """Bool ``(B,)``: still correct on the FGSM image."""
    delta = torch.zeros_like(x, requires_grad=True)
    loss = F.cross_entropy(logits_of(model(x + delta / std)), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, delta)
    delta = _clamp(eps * grad.sign(), lo, hi)
    with torch.no_grad():
        return logits_of(model(x + delta / std)).argmax(1) == y


def _pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    std: Tensor,
    lo: Tensor,
    hi: Tensor,
    eps: float,
    steps: int,
    alpha: float,
    noise: Tensor | None,
) -> Tensor:
    """Bool ``(B,)``: correct at every point the PGD walk visits."""
    delta = torch.zeros_like(x) if noise is None else _clamp(eps * noise, lo, hi)
    held = torch.ones_like(y, dtype=torch.bool)
    for _ in range(steps):
        delta.requires_grad_(True)
        out = logits_of(model(x + delta / std))
        held &= out.argmax(1) == y
        (grad,) = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), delta)
        delta = _clamp(delta.detach() + alpha * grad.sign(), lo, hi)
    with torch.no_grad():
        held &= logits_of(model(x + delta / std)).argmax(1) == y
    return held


def _check_args(attack: str, epsilons, steps: int, alpha: float | None) -> tuple[str, list]:
    key = str(attack).strip().lower()
    if key not in ATTACKS:
        raise unknown_name("attack", attack, ATTACKS)
    if isinstance(epsilons, (int, float)) or not epsilons:
        raise ConfigError(f"epsilons must be a non-empty list of numbers, got {epsilons!r}")
    eps = []
    for e in epsilons:
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e <= 1:
            raise ConfigError(f"epsilons: each must be a number in [0, 1] (pixel units), got {e!r}")
        eps.append(float(e))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and 0 < alpha < math.inf):
        raise ConfigError(f"alpha must be a positive number (pixel units) or None, got {alpha!r}")
    return key, eps


def attack_accuracy(
    model: nn.Module,
    loader: Iterable,
    *,
    attack: str,
    epsilons: Sequence[float],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    steps: int = 10,
    alpha: float | None = None,
    random_start: bool = True,
    max_batches: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[float, float]:
    """Top-1 accuracy (percent) under ``attack`` ("fgsm" | "pgd") for every epsilon.

    ``epsilons`` and ``alpha`` are in pixel units (``[0, 1]`` images); ``mean``/``std`` are the
    per-channel constants the loader normalized with (default: read from the loader, see
    ``loader_norm``; ``dataset_norm(name)`` gives them by dataset name). ``steps``, ``alpha``
    (default ``2.5 * eps / steps``) and ``random_start`` apply to PGD only. Batches are
    ``(x, y)`` with ``x`` normalized. Returns ``{eps: top1}`` in the order given.
    """
    attack, eps_list = _check_args(attack, epsilons, steps, alpha)
    if isinstance(getattr(loader, "tokens", None), torch.Tensor):
        raise ConfigError(
            "robustness: the attacks move pixels, and this loader yields token ids; "
            "analyze a text model without --attacks"
        )
    if mean is None or std is None:
        if mean is not None or std is not None:
            raise ConfigError("pass both mean= and std=, or neither (to read them from the loader)")
        mean, std = loader_norm(loader)
    if any(not s > 0 for s in torch.as_tensor(std).flatten().tolist()):
        raise ConfigError(f"std must be positive, got {std!r}")
    device = _model_device(model)
    correct = dict.fromkeys(eps_list, 0)
    n = 0
    with _attack_mode(model):
        for i, (x, y) in enumerate(_batches(loader, max_batches, progress, attack)):
            if not x.is_floating_point():
                raise ConfigError(
                    f"robustness: the attacks move pixels, and the batches hold {x.dtype} "
                    f"{tuple(x.shape)} inputs (token ids?); give image batches"
                )
            x, y = x.to(device), y.to(device)
            m, s = _channel_stats(mean, "mean", x), _channel_stats(std, "std", x)
            p = (x * s + m).clamp(0, 1)  # clean pixels; the clamp absorbs round-off only
            noise = None
            if attack == "pgd" and random_start:
                u = torch.rand(x.shape, generator=seeded_generator(seed, "pgd", i))
                noise = (2 * u - 1).to(device=device, dtype=x.dtype)
            for eps in correct:
                lo, hi = torch.clamp(-p, min=-eps), torch.clamp(1 - p, max=eps)
                if attack == "fgsm":
                    ok = _fgsm(model, x, y, s, lo, hi, eps)
                else:
                    a = alpha if alpha is not None else 2.5 * eps / steps
                    ok = _pgd(model, x, y, s, lo, hi, eps, steps, a, noise)
                correct[eps] += int(ok.sum())
            n += len(y)
    return {e: 100.0 * c / max(n, 1) for e, c in correct.items()}


def _eps_label(eps: float) -> str:
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{eps:.4g} ({round(k)}/255)"
    return f"{eps:g}"


def robustness_table(results: Mapping[str, Mapping[str, Mapping[float, float]]]) -> str:
    """Side-by-side table: one row per (attack, epsilon), one column per model.

    ``results`` is ``{model name: {attack: {eps: top1}}}``, e.g. ``{"dense": ..., "sparse":
    ...}``. The first model is the reference: the others show their difference to it in points.
    A missing entry prints as ``-``.
    """
    if not results:
        raise ConfigError("robustness_table: results is empty; expected {name: {attack: {eps: %}}}")
    names = list(results)
    attacks = list(dict.fromkeys(a for n in names for a in results[n]))
    rows = []
    for attack in attacks:
        for eps in sorted({e for n in names for e in results[n].get(attack, {})}):
            vals = [results[n].get(attack, {}).get(eps) for n in names]
            cells = []
            for j, v in enumerate(vals):
                if v is None:
                    cells.append("-")
                elif j == 0 or vals[0] is None:
                    cells.append(f"{v:.2f}")
                else:
                    cells.append(f"{v:.2f} ({v - vals[0]:+.2f})")
            rows.append([attack, _eps_label(eps), *cells])
    return format_table(rows, ["attack", "epsilon", *names])
