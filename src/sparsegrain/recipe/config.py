"""Typed recipe sections ``model``, ``train`` and ``sparsity`` (``data``: ``sparsegrain.data``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import ConfigError, did_you_mean
from ..core.schedules import LR_SCHEDULES
from ..core.validate import check_choice, check_range, coerce, from_dict
from ..methods import METHODS
from ..models import MODELS, model_options
from ..structures import SCORES, parse_structure


@dataclass
class ModelConfig:
    """``model`` section: a zoo name and its options (``width``, ``layout``, ...)."""

    name: str = "resnet20"
    num_classes: int | None = None  # default: from the dataset
    in_channels: int | None = None  # default: from the dataset
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: Any) -> ModelConfig:
        obj, extras = from_dict(cls, data, "model", extra_ok=True)

        canonical = MODELS.canonical(obj.name)
        allowed = model_options(canonical)
        for key in extras:
            if key not in allowed:
                raise ConfigError(
                    f"model: '{canonical}' has no option '{key}'{did_you_mean(key, allowed)}; "
                    f"allowed: name, num_classes, in_channels, {', '.join(allowed)}"
                )
        obj.options = {**obj.options, **extras}
        return obj

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, **self.options}
        if self.num_classes is not None:
            out["num_classes"] = self.num_classes
        if self.in_channels is not None:
            out["in_channels"] = self.in_channels
        return out


@dataclass
class TrainConfig:
    """``train`` section: optimizer, schedule, loss and run settings."""

    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_bn_and_bias: bool = False  # False: no weight decay on BN parameters and biases
    schedule: str = "cosine"
    step_size: float = 30.0
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    lr_at_freeze: str = "none"  # none | restart | boost (Campfire's LR configurations)
    freeze_lr: float | None = None  # LR the restart/boost starts from; default: train.lr
    label_smoothing: float = 0.0
    seed: int = 0
    channels_last: bool = True
    threads: int | None = None
    progress: bool = True
    deterministic: bool = False
    eval_every: int = 1
    # Seconds a rank waits for the others in a collective before the run stops naming the rank
    # that stopped answering (torchrun runs only; torch's own default is 30 minutes).
    dist_timeout: float = 600.0

    def validate(self) -> None:

        s = "train"
        check_range(s, "epochs", self.epochs, 1)
        check_range(s, "lr", self.lr, 0, lo_open=True)
        check_range(s, "momentum", self.momentum, 0, 1, hi_open=True)
        check_range(s, "weight_decay", self.weight_decay, 0)
        check_choice(s, "schedule", self.schedule, LR_SCHEDULES)
        check_range(s, "step_size", self.step_size, 0, lo_open=True)
        check_range(s, "gamma", self.gamma, 0, lo_open=True)
        check_range(s, "warmup_epochs", self.warmup_epochs, 0, self.epochs)
        check_range(s, "min_lr", self.min_lr, 0, self.lr)
        check_choice(s, "lr_at_freeze", self.lr_at_freeze, ("none", "restart", "boost"))
        check_range(s, "freeze_lr", self.freeze_lr, 0, lo_open=True)
        check_range(s, "label_smoothing", self.label_smoothing, 0, 1, hi_open=True)
        check_range(s, "seed", self.seed, 0)
        check_range(s, "threads", self.threads, 1)
        check_range(s, "eval_every", self.eval_every, 1)
        check_range(s, "dist_timeout", self.dist_timeout, 0, 86400, lo_open=True)
        if self.lr_at_freeze == "boost" and self.freeze_lr is None:
            raise ConfigError(
                "train.freeze_lr: required by lr_at_freeze 'boost' (the LR to jump to)"
            )
        if self.nesterov and self.momentum == 0:
            raise ConfigError("train.nesterov: needs train.momentum > 0, got momentum 0")
        if sorted(self.milestones) != list(self.milestones):
            raise ConfigError(f"train.milestones: must be increasing, got {self.milestones}")


OVERRIDE_KEYS = ("target", "structure", "score", "fallback", "initial")


@dataclass
class SparsityConfig:
    """``sparsity`` section: what ``sparsify_`` takes (DESIGN.md section 6).

    Method-specific keys sit beside the common ones and land in ``params``, validated by the
    method's own ``Params`` dataclass.
    """

    method: str = "dense"
    structure: str = "fine"
    target: float = 0.0
    initial: float = 0.0  # s_i of the cubic ramp
    start: float = 0.0  # epochs
    end: float | None = None  # epochs; required by gradual methods
    frequency: int = 100  # steps between mask updates
    scope: str | None = None  # layer | global; None: the method's default_scope
    score: str | None = None  # None: the method's default_score (l1 but for torch-ao)
    include: list[str] = field(default_factory=list)  # empty: every Conv/Linear
    exclude: list[str] | None = None  # None: first conv and classifier; []: prune everything
    types: list[str] = field(default_factory=lambda: ["conv", "linear"])
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    fallback: str = "error"  # error | dense | a structure, for layers the structure does not fit
    # Mask the BatchNorm channel (weight and bias) after every filter dropped whole, so that it
    # outputs exactly 0 and compaction removes it (``bn_prune``). None: on for the layers whose
    # structure's group is a whole filter (``filter``), off for the others.
    prune_bn: bool | None = None
    # Layers whose outputs are summed into one tensor (a ResNet's residual stream) share one
    # filter mask, so compaction can remove the stream's channels (``couple``); filter only.
    couple: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: Any) -> SparsityConfig:
        if isinstance(data, SparsityConfig):  # built directly: the same checks and defaults
            data = data.to_dict()
        obj, extras = from_dict(cls, data, "sparsity", extra_ok=True)

        obj.method = METHODS.canonical(obj.method)
        method = METHODS.get(obj.method)
        common = [f.name for f in dataclasses.fields(cls) if f.name != "params"]
        allowed = [f.name for f in dataclasses.fields(method.Params)]
        unknown = [k for k in extras if k not in allowed]
        if unknown:
            key = unknown[0]
            raise ConfigError(
                f"sparsity: unknown key '{key}'{did_you_mean(key, common + allowed)} for method "
                f"'{obj.method}'; allowed: {', '.join(common + allowed)}"
            )
        merged = {**obj.params, **extras}
        obj.params = dataclasses.asdict(from_dict(method.Params, merged, "sparsity"))
        if obj.scope is None:
            obj.scope = getattr(method, "default_scope", "layer")
        if obj.score is None:
            obj.score = getattr(method, "default_score", "l1")
        obj.validate_common(method)
        return obj

    def validate_common(self, method) -> None:

        s = "sparsity"
        parse_structure(self.structure)
        check_range(s, "target", self.target, 0, 1, hi_open=True)
        check_range(s, "initial", self.initial, 0, self.target)
        check_range(s, "start", self.start, 0)
        check_range(s, "frequency", self.frequency, 1)
        check_choice(s, "scope", self.scope, ("layer", "global"))
        check_choice(s, "score", self.score, SCORES.names())
        for t in self.types:
            check_choice(s, "types", t, ("conv", "linear"))
        if self.fallback not in ("error", "dense"):
            try:
                parse_structure(self.fallback)
            except ConfigError as e:
                raise ConfigError(
                    f"sparsity.fallback: must be 'error', 'dense' or a structure; {e}"
                ) from None
        if self.prune_bn and getattr(method, "regrows", False):
            raise ConfigError(
                f"sparsity.prune_bn: true is not allowed with method '{self.method}': its pruned "
                "weights can come back (the mask is never fixed), so a BatchNorm channel cannot "
                "be masked with its filter; leave prune_bn unset or false"
            )
        if self.couple and not getattr(method, "couples", True):
            raise ConfigError(
                f"sparsity.couple: true is not allowed with method '{self.method}': its masks do "
                "not come from per-layer selection (couple shares one filter mask between the "
                "layers summed into one tensor); leave couple false"
            )
        if self.end is not None and self.end < self.start:
            raise ConfigError(f"sparsity.end: must be >= start ({self.start}), got {self.end}")
        if getattr(method, "needs_end", False) and self.end is None and self.target > 0:
            raise ConfigError(f"sparsity.end: required by method '{self.method}' (an epoch)")
        for pattern, keys in self.overrides.items():
            if not isinstance(keys, dict):
                raise ConfigError(f"sparsity.overrides.{pattern}: expected a mapping, got {keys!r}")
            for key, value in keys.items():
                where = f"sparsity.overrides.{pattern}.{key}"
                if key not in OVERRIDE_KEYS:
                    raise ConfigError(
                        f"{where}: unknown key{did_you_mean(key, OVERRIDE_KEYS)}; "
                        f"allowed: {', '.join(OVERRIDE_KEYS)}"
                    )
                if key in ("target", "initial"):
                    value = coerce(value, float, where)
                    check_range(f"sparsity.overrides.{pattern}", key, value, 0, 1, hi_open=True)
                elif key in ("structure", "fallback") and value not in ("error", "dense"):
                    parse_structure(coerce(value, str, where))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(out.pop("params"))
        return out
