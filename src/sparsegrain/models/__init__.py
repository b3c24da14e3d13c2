"""The model zoo: CIFAR and ImageNet ResNets, BN-VGG, and tiny test models, looked up by name.

Every registered factory is ``factory(*, num_classes=10, in_channels=3, **options)`` and checks
its options itself, so ``create_model(name, ...)`` and ``MODELS.get(name)(...)`` fail the same
way: a :class:`~sparsegrain.errors.ConfigError` naming the model, the option, the bad value and
what is allowed. No model downloads anything; none has pretrained weights.

Module names are fixed so recipe name patterns are predictable: the first conv is ``conv1``
(VGG: ``features.0``; ``mlp_tiny`` has no conv, its first layer is ``fc1``) and the classifier is
``fc`` (VGG: ``classifier``).

A prefixed name is a model users bring (``external``): ``torchvision:NAME``, ``timm:NAME`` or
``hf:CONFIG.json``; ``create_model`` builds those too, and they keep their own module names.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from ..core.errors import ConfigError, did_you_mean
from ..core.onednn import guard_pointwise_strided_
from ..core.registry import Registry
from ..core.validate import show
from .external import create_external, external_source
from .resnet_cifar import BasicBlock, CifarResNet
from .resnet_imagenet import LAYOUTS, Bottleneck, ResNet
from .tiny import ConvNetTiny, MLPTiny
from .vgg import VGG, VGG_CFGS

__all__ = [
    "MODELS",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "ConvNetTiny",
    "MLPTiny",
    "Option",
    "ResNet",
    "VGG",
    "create_model",
    "external_source",
    "list_models",
    "model_options",
    "option_specs",
]

MODELS = Registry("model")


# Sanity caps: far above any real network, low enough that no size overflows inside torch.
MAX_WIDTH = 4096  # an int option (width, input_size, hidden, ...), unless it declares its own
MAX_CLASSES = 1_000_000
MAX_CHANNELS = 4096


@dataclass(frozen=True)
class Option:
    """One model option: its default, and the values allowed (the default's type decides how)."""

    default: bool | int | str
    minimum: int = 1  # int options
    multiple_of: int = 1  # int options
    choices: tuple[str, ...] = ()  # str options
    maximum: int = MAX_WIDTH  # int options: a sanity cap, refused as "an integer <= maximum"

    def allowed(self) -> str:
        if isinstance(self.default, bool):
            return "true or false"
        if isinstance(self.default, int):
            step = f" and a multiple of {self.multiple_of}" if self.multiple_of > 1 else ""
            return f"an integer >= {self.minimum}{step}"
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` ("must be ..."), or None when it is allowed."""
        if isinstance(self.default, bool):
            ok = isinstance(value, bool)
        elif isinstance(self.default, int):
            integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            if integral and value > self.maximum:
                return f"must be an integer <= {self.maximum}"
            ok = integral and value >= self.minimum and value % self.multiple_of == 0
        else:
            ok = isinstance(value, str) and value in self.choices
        return None if ok else f"must be {self.allowed()}"

    def hint(self, value: Any) -> str:
        return did_you_mean(value, self.choices) if isinstance(value, str) else ""

    def check(self, model: str, key: str, value: Any) -> bool | int | str:
        """Return ``value`` (an int as ``int``) if allowed, else raise ConfigError."""
        problem = self.problem(value)
        if problem is not None:
            raise ConfigError(
                f"model '{model}' option '{key}' {problem}, got {show(value)}{self.hint(value)}"
            )
        is_int = isinstance(self.default, int) and not isinstance(self.default, bool)
        return int(value) if is_int else value


# Always accepted by every factory, so not listed by model_options().
IO_OPTIONS = {
    "num_classes": Option(10, maximum=MAX_CLASSES),
    "in_channels": Option(3, maximum=MAX_CHANNELS),
}
IO_ARGS = tuple(IO_OPTIONS)


def _resolve(model: str, options: Mapping[str, Option], given: Mapping[str, Any]) -> dict:
    """Check ``given`` against ``options``; return every option's value, defaults filled in."""
    for key in given:
        if key not in options:
            known = [*options, *IO_ARGS]
            raise ConfigError(
                f"model '{model}' has no option '{key}'{did_you_mean(key, known)}; "
                f"allowed: {', '.join(known)}"
            )
    return {key: opt.check(model, key, given.get(key, opt.default)) for key, opt in options.items()}


def _register(
    name: str, doc: str, build: Callable[..., nn.Module], aliases: tuple[str, ...] = (), **options
) -> None:
    """Register a validating factory for ``build`` with one-line help ``doc``."""

    def factory(*, num_classes: int = 10, in_channels: int = 3, **model_kwargs: Any) -> nn.Module:
        kwargs = _resolve(name, options, model_kwargs)
        num_classes = IO_OPTIONS["num_classes"].check(name, "num_classes", num_classes)
        in_channels = IO_OPTIONS["in_channels"].check(name, "in_channels", in_channels)
        return build(num_classes=num_classes, in_channels=in_channels, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    factory.options = dict(options)  # type: ignore[attr-defined]
    MODELS.register(name, factory, aliases=aliases)


def create_model(
    name: str, *, num_classes: int, in_channels: int | None, **kwargs: Any
) -> nn.Module:
    """Build the model registered as ``name`` (aliases and any case accepted), or the model a
    prefixed name gives (``torchvision:``, ``timm:``, ``hf:``; see ``external``).

    ``in_channels`` None means token-id inputs, which only a Hugging Face text model reads (a
    zoo model refuses it). Raises ConfigError for an unknown name, an unknown option or a value
    out of range.
    """
    if external_source(name) is not None:
        model = create_external(name, num_classes=num_classes, in_channels=in_channels, **kwargs)
    else:
        model = MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, **kwargs)
    guard_pointwise_strided_(model)  # a oneDNN CPU fault in narrow strided 1x1 convs
    return model


def option_specs(name: str) -> dict[str, Option] | None:
    """The ``Option`` of every option ``name`` takes, or None for a factory registered from
    outside with plain keyword defaults (its values are checked by the factory alone)."""
    options = getattr(MODELS.get(name), "options", None)
    return None if options is None else dict(options)


def model_options(name: str) -> dict[str, object]:
    """The options ``name`` accepts, with their defaults (``num_classes``/``in_channels`` aside)."""
    factory = MODELS.get(name)
    options = getattr(factory, "options", None)
    if options is not None:
        return {key: opt.default for key, opt in options.items()}
    # A factory registered from outside: read its keyword defaults.
    return {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.default is not inspect.Parameter.empty and p.name not in IO_ARGS
    }


def list_models() -> list[tuple[str, str]]:
    """(name, one-line description) of every registered model, in registration order."""
    return [(e.name, e.help) for e in MODELS.entries()]


# ---- registrations -------------------------------------------------------------------------

for _depth in (20, 32, 56):
    _register(
        f"resnet{_depth}",
        f"CIFAR ResNet-{_depth} (He et al. 2016 sec 4.2), 1x1-conv shortcuts, width 16/32/64",
        partial(CifarResNet, depth=_depth),
        width=Option(16),
    )

_IMAGENET_OPTIONS = {
    "width": Option(64),
    "small_input": Option(False),
    "zero_init_residual": Option(False),
}
_register(
    "resnet18",
    "ImageNet ResNet-18, BasicBlock (small_input=true for 28-32 px)",
    partial(ResNet, block=BasicBlock, layers=(2, 2, 2, 2)),
    layout=Option("v1.5", choices=LAYOUTS),
    **_IMAGENET_OPTIONS,
)
_register(
    "resnet34",
    "ImageNet ResNet-34, BasicBlock (small_input=true for 28-32 px)",
    partial(ResNet, block=BasicBlock, layers=(3, 4, 6, 3)),
    layout=Option("v1.5", choices=LAYOUTS),
    **_IMAGENET_OPTIONS,
)
_register(
    "resnet50",
    "ImageNet ResNet-50, Bottleneck, layout v1.5 (stride in the 3x3) unless layout='v1'",
    partial(ResNet, block=Bottleneck, layers=(3, 4, 6, 3)),
    layout=Option("v1.5", choices=LAYOUTS),
    **_IMAGENET_OPTIONS,
)
_register(
    "resnet50_v1",
    "ImageNet ResNet-50 v1: downsampling stride in the first 1x1 conv (He et al. 2016)",
    partial(ResNet, block=Bottleneck, layers=(3, 4, 6, 3), layout="v1"),
    **_IMAGENET_OPTIONS,
)
_register(
    "resnet50_v1_5",
    "ImageNet ResNet-50 v1.5: downsampling stride in the 3x3 conv (torchvision, Campfire)",
    partial(ResNet, block=Bottleneck, layers=(3, 4, 6, 3), layout="v1.5"),
    aliases=("resnet50_v1.5",),
    **_IMAGENET_OPTIONS,
)
for _name in ("vgg11", "vgg16"):
    _register(
        _name,
        f"VGG-{_name[3:]} with BN for small images: global avg pool, one Linear (width 64)",
        partial(VGG, cfg=VGG_CFGS[_name]),
        width=Option(64),
    )
_register(
    "resnet_tiny",
    "test model: CIFAR ResNet-8 (1 block per stage), width 4",
    partial(CifarResNet, depth=8),
    width=Option(4),
)
_register(
    "vgg_tiny",
    "test model: BN-VGG with 3 convs (4, 8, 8 channels)",
    partial(VGG, cfg=VGG_CFGS["vgg_tiny"]),
    width=Option(4),
)
_register(
    "mlp_tiny",
    "test model: Flatten, Linear to 32, Linear to classes (input_size 28)",
    MLPTiny,
    input_size=Option(28),
    hidden=Option(32),
)
_register(
    "convnet_tiny",
    "test model: grouped, depthwise, 1x1, 1x3, 3x1 and dilated convs",
    ConvNetTiny,
    width=Option(8, minimum=2, multiple_of=2),
)
