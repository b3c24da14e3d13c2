"""Typed recipe sections ``model``, ``train`` and ``sparsity`` (``data``: ``sparsegrain.data``).

Each key's type and bounds are its annotation (``core.validate``); ``validate`` and the ``parse``
class methods hold the rules that relate keys, or that need a registry (model options, methods'
``Params``, structures).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any

from ..core.errors import ConfigError, did_you_mean
from ..core.schedules import LR_SCHEDULES
from ..core.validate import (
    EPOCH_LIMIT,
    Range,
    check_bounds,
    check_choice,
    check_range,
    from_dict,
    key_name,
    show,
)
from ..methods import METHODS
from ..models import MAX_CHANNELS, MAX_CLASSES, MODELS, model_options, option_specs
from ..models.external import EXAMPLES as EXTERNAL_EXAMPLES
from ..models.external import check_external, external_source
from ..structures import SCORES, parse_structure

# Sanity caps on keys that have no natural upper bound.
MAX_THREADS = 1024
MAX_SEED = 2**63 - 1  # torch.manual_seed takes up to 2**64 - 1; int64 everywhere else
# torch.compile's modes (reduce-overhead: CUDA graphs; max-autotune: tuned kernels, with CUDA
# graphs unless -no-cudagraphs)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class ModelConfig:
    """``model`` section: a zoo name and its options (``width``, ``layout``, ...), or a model
    users bring by prefix (``torchvision:NAME``, ``timm:NAME``, ``hf:CONFIG.json``) and the
    options its constructor (Hugging Face: its config) takes."""

    name: str = "resnet20"
    num_classes: Annotated[int | None, Range(1, limit=MAX_CLASSES)] = None  # default: the data's
    in_channels: Annotated[int | None, Range(1, limit=MAX_CHANNELS)] = None  # default: the data's
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: Any) -> ModelConfig:
        obj, extras = from_dict(cls, data, "model", extra_ok=True)
        try:
            external = external_source(obj.name) is not None
            canonical = obj.name if external else MODELS.canonical(obj.name)
        except ConfigError as e:
            also = "" if ":" in str(obj.name) else f"; or bring one: {EXTERNAL_EXAMPLES}"
            raise ConfigError(f"model.name: {e}{also}") from None
        checked = {}
        for where, given in (("model.options", obj.options), ("model", extras)):
            if external:
                checked.update(_check_external(obj.name, given, where))
            else:
                checked.update(_check_model_options(canonical, given, where))
        obj.options = checked
        return obj

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, **self.options}
        if self.num_classes is not None:
            out["num_classes"] = self.num_classes
        if self.in_channels is not None:
            out["in_channels"] = self.in_channels
        return out


def _check_external(name: str, given: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        return check_external(name, given, where)
    except ConfigError as e:
        text = str(e)
        raise ConfigError(text if text.startswith(where) else f"model.name: {text}") from None


def _check_model_options(model: str, given: dict[str, Any], where: str) -> dict[str, Any]:
    """``given`` options of zoo model ``model``, each checked against its ``Option``."""
    allowed = model_options(model)
    specs = option_specs(model)
    out = {}
    for key, value in given.items():
        if key not in allowed:
            raise ConfigError(
                f"{where}: '{model}' has no option {show(key)}{did_you_mean(key, allowed)}; "
                f"allowed: name, num_classes, in_channels, {', '.join(allowed)}"
            )
        if specs is None:  # a factory registered from outside: the generic bounds only
            check_bounds(value, f"model.{key}")
            out[key] = value
            continue
        opt = specs[key]
        problem = opt.problem(value)
        if problem is not None:
            raise ConfigError(
                f"model.{key}: option '{key}' of model '{model}' {problem}, got "
                f"{show(value)}{opt.hint(value)}"
            )
        out[key] = opt.check(model, key, value)
    return out


@dataclass
class TrainConfig:
    """``train`` section: optimizer, schedule, loss and run settings."""

    epochs: Annotated[int, Range(1, limit=EPOCH_LIMIT)] = 10
    lr: Annotated[float, Range(0, lo_open=True)] = 0.1
    momentum: Annotated[float, Range(0, 1, hi_open=True)] = 0.9
    nesterov: bool = False
    weight_decay: Annotated[float, Range(0)] = 5e-4
    decay_bn_and_bias: bool = False  # False: no weight decay on BN parameters and biases
    schedule: str = "cosine"
    # Epochs between decays; a thousandth of an epoch at least, so that ``t / step_size`` stays
    # finite in the schedule's ``floor``.
    step_size: Annotated[float, Range(1e-3)] = 30.0
    milestones: Annotated[list[float], Range(0)] = field(default_factory=list)
    # A decay factor: above 1, ``gamma ** k`` overflows a float within a long run.
    gamma: Annotated[float, Range(0, 1, lo_open=True)] = 0.1
    warmup_epochs: Annotated[float, Range(0)] = 0.0  # and <= epochs
    min_lr: Annotated[float, Range(0)] = 0.0  # and <= lr
    lr_at_freeze: str = "none"  # none | restart | boost (Campfire's LR configurations)
    # LR the restart/boost starts from; default: train.lr
    freeze_lr: Annotated[float | None, Range(0, lo_open=True)] = None
    label_smoothing: Annotated[float, Range(0, 1, hi_open=True)] = 0.0
    seed: Annotated[int, Range(0, limit=MAX_SEED)] = 0
    channels_last: bool = True
    threads: Annotated[int | None, Range(1, limit=MAX_THREADS)] = None
    progress: bool = True
    deterministic: bool = False
    # Train through ``torch.compile`` (forward and backward; evaluation stays eager). Mask
    # updates write the masks' buffers in place, so they do not recompile the model.
    compile: bool = False
    compile_mode: str = "default"  # torch.compile's mode (COMPILE_MODES); with compile only
    eval_every: Annotated[int, Range(1, limit=EPOCH_LIMIT)] = 1
    # Seconds a rank waits for the others in a collective before the run stops naming the rank
    # that stopped answering (torchrun runs only; torch's own default is 30 minutes).
    dist_timeout: Annotated[float, Range(0, 86400, lo_open=True)] = 600.0

    def validate(self) -> None:
        s = "train"
        check_choice(s, "schedule", self.schedule, LR_SCHEDULES)
        check_range(s, "warmup_epochs", self.warmup_epochs, 0, self.epochs)
        check_range(s, "min_lr", self.min_lr, 0, self.lr)
        check_choice(s, "lr_at_freeze", self.lr_at_freeze, ("none", "restart", "boost"))
        if self.lr_at_freeze == "boost" and self.freeze_lr is None:
            raise ConfigError(
                "train.freeze_lr: required by lr_at_freeze 'boost' (the LR to jump to)"
            )
        if self.nesterov and self.momentum == 0:
            raise ConfigError("train.nesterov: needs train.momentum > 0, got momentum 0")
        if sorted(self.milestones) != list(self.milestones):
            raise ConfigError(f"train.milestones: must be increasing, got {show(self.milestones)}")
        check_choice(s, "compile_mode", self.compile_mode, COMPILE_MODES)
        if self.compile_mode != "default" and not self.compile:
            raise ConfigError(
                f"train.compile_mode: '{self.compile_mode}' needs train.compile: true "
                "(the model is not compiled otherwise)"
            )


SPARSITY = Range(0, 1, hi_open=True)  # a share of weights pruned


@dataclass
class Override:
    """The keys of one ``sparsity.overrides`` entry (pattern -> keys); only the keys given apply,
    so the defaults here are never used."""

    target: Annotated[float, SPARSITY] = 0.0
    structure: str = ""
    score: str = ""
    fallback: str = ""
    initial: Annotated[float, SPARSITY] = 0.0


OVERRIDE_KEYS = tuple(f.name for f in dataclasses.fields(Override))


@dataclass
class SparsityConfig:
    """``sparsity`` section: what ``sparsify_`` takes (DESIGN.md section 6).

    Method-specific keys sit beside the common ones and land in ``params``, validated by the
    method's own ``Params`` dataclass.
    """

    method: str = "dense"
    structure: str = "fine"
    target: Annotated[float, SPARSITY] = 0.0
    initial: Annotated[float, SPARSITY] = 0.0  # s_i of the cubic ramp; and <= target
    start: Annotated[float, Range(0)] = 0.0  # epochs
    end: Annotated[float | None, Range(0)] = None  # epochs; required by gradual methods
    frequency: Annotated[int, Range(1)] = 100  # steps between mask updates
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
        try:
            obj.method = METHODS.canonical(obj.method)
        except ConfigError as e:
            raise ConfigError(f"sparsity.method: {e}") from None
        method = METHODS.get(obj.method)
        obj.params = obj.parse_params(method, extras)
        if obj.scope is None:
            obj.scope = getattr(method, "default_scope", "layer")
        if obj.score is None:
            obj.score = getattr(method, "default_score", "l1")
        obj.validate_common(method)
        return obj

    def parse_params(self, method, extras: dict[str, Any]) -> dict[str, Any]:
        """The method's keys (beside the common ones, or under ``params``), checked by its
        ``Params`` dataclass."""
        common = [f.name for f in dataclasses.fields(self) if f.name != "params"]
        allowed = [f.name for f in dataclasses.fields(method.Params)]
        for where, given in (("sparsity.params", self.params), ("sparsity", extras)):
            unknown = [k for k in given if k not in allowed]
            if unknown:
                key = unknown[0]
                raise ConfigError(
                    f"{where}: unknown key {show(key)}{did_you_mean(key, common + allowed)} for "
                    f"method '{self.method}'; allowed: {', '.join(common + allowed)}"
                )
        from_dict(method.Params, self.params, "sparsity.params")
        merged = {**self.params, **extras}
        return dataclasses.asdict(from_dict(method.Params, merged, "sparsity"))

    def check_method_takes(self, method) -> None:
        """Refuse, when the recipe is read (before a sweep trains anything), a scope or a
        structure the method has no selection for: the section's ``structure``, a ``fallback``
        structure and every override's. (Layers it reaches otherwise are checked at attach.)"""
        name = f"method '{self.method}'"
        if self.scope not in method.scopes:
            raise ConfigError(
                f"sparsity.scope: {name} takes {' or '.join(method.scopes)}; got '{self.scope}'"
            )
        if method.structures is None or not getattr(method, "prunes", True):
            return
        specs = [("sparsity.structure", self.structure)]
        if self.fallback not in ("error", "dense"):
            specs.append(("sparsity.fallback", self.fallback))
        for pattern, keys in self.overrides.items():
            for key in ("structure", "fallback"):
                if keys.get(key) not in (None, "error", "dense"):
                    specs.append((f"sparsity.overrides.{pattern}.{key}", keys[key]))
        for where, spec in specs:
            if parse_structure(spec).name not in method.structures:
                allowed = ", ".join(f"'{s}'" for s in method.structures)
                raise ConfigError(f"{where}: {name} supports {allowed} only; got '{spec}'")

    def validate_common(self, method) -> None:
        s = "sparsity"
        _structure(self.structure, "sparsity.structure")
        check_range(s, "initial", self.initial, 0, self.target)
        check_choice(s, "scope", self.scope, ("layer", "global"))
        check_choice(s, "score", self.score, SCORES.names())
        for t in self.types:
            check_choice(s, "types", t, ("conv", "linear"))
        _fallback(self.fallback, "sparsity.fallback")
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
            raise ConfigError(
                f"sparsity.end: required by method '{self.method}' with target {self.target} "
                "(the epoch the target is reached)"
            )
        self.overrides = {p: _override(p, keys) for p, keys in self.overrides.items()}
        self.check_method_takes(method)
        if getattr(method, "prunes", True):
            self.check_reachable()

    def check_reachable(self) -> None:
        """Refuse a target above the sparsity a structure can reach (``nm:2:4`` keeps 2 of every
        4: at most 0.5), for the section's structure and fallback and for every override with
        what it inherits from the section; such a layer would stop at the structure's
        sparsity, below the target asked for."""
        pairs = [("sparsity", self.structure, self.fallback, self.target)]
        for pattern, over in self.overrides.items():
            pairs.append(
                (
                    f"sparsity.overrides.{pattern}",
                    over.get("structure", self.structure),
                    over.get("fallback", self.fallback),
                    over.get("target", self.target),
                )
            )
        for where, structure, fallback, target in pairs:
            specs = [("structure", structure)]
            if fallback not in ("error", "dense"):
                specs.append(("fallback", fallback))
            for key, spec in specs:
                fixed = parse_structure(spec).fixed_sparsity
                if fixed is not None and target > fixed + 1e-9:
                    raise ConfigError(
                        f"{where}.target: method '{self.method}' with {key} "
                        f"{parse_structure(spec).spec} reaches at most sparsity {fixed:g}, got "
                        f"target {target:g}; allowed: a target up to {fixed:g}"
                    )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(out.pop("params"))
        return out


def _structure(spec: str, where: str) -> None:
    try:
        parse_structure(spec)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _fallback(spec: str, where: str) -> None:
    if spec in ("error", "dense"):
        return
    try:
        parse_structure(spec)
    except ConfigError as e:
        raise ConfigError(f"{where}: must be 'error', 'dense' or a structure; {e}") from None


def _override(pattern: str, keys: Any) -> dict[str, Any]:
    """One ``sparsity.overrides`` entry, typed and bounded by ``Override``; the keys given only."""
    where = f"sparsity.overrides.{pattern}"
    if not isinstance(keys, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {show(keys)}")
    for key in keys:
        if key not in OVERRIDE_KEYS:
            raise ConfigError(
                f"{where}.{key_name(key)}: unknown key"
                f"{did_you_mean(key, OVERRIDE_KEYS)}; allowed: {', '.join(OVERRIDE_KEYS)}"
            )
    obj = from_dict(Override, keys, where)
    out = {key: getattr(obj, key) for key in keys}
    if "structure" in out:
        _structure(out["structure"], f"{where}.structure")
    if "fallback" in out:
        _fallback(out["fallback"], f"{where}.fallback")
    if "score" in out:
        check_choice(where, "score", out["score"], SCORES.names())
    return out
