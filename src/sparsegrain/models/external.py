"""Models users bring from torchvision, timm and Hugging Face transformers (none of them is a
dependency of sparsegrain: each is imported only when a model of it is asked for).

The importers here are the one place the project imports those packages, so the workaround
below is applied once, the same way, for the library, the CLI and the tests.

A recipe names such a model with a prefix: ``torchvision:resnet18``, ``timm:convnext_nano``, or
``hf:path/to/config.json`` (a Hugging Face config file, or a directory holding ``config.json``).
Every one is built with random weights (trained ones come through ``--init``), for the data's
classes and input channels. The model's options are passed on: to the torchvision builder or
``timm.create_model`` as keyword arguments, or set on the Hugging Face config as its keys
(``hf``: how a config file becomes a model class, a config and the kind of input it reads).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..core.errors import ConfigError, did_you_mean
from ..core.validate import check_bounds, show
from .hf import RESERVED as HF_RESERVED
from .hf import first_line, hf_setup

_TORCHVISION_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor",
)
_declared: list = []  # keeps the torch.library declarations alive


def _missing(package: str, extra: str = "models") -> ConfigError:
    return ConfigError(
        f"{package} is not installed; install it (pip install 'sparsegrain[{extra}]' pins "
        "versions that keep torch as it is)"
    )


def import_torchvision() -> ModuleType:
    """``torchvision``, imported so that its model code loads with any torch build.

    A torchvision wheel built for another torch variant (a CUDA wheel with the CPU torch) cannot
    load its C++ operators, and its import fails while registering fake kernels for
    ``torchvision::nms`` and ``torchvision::qnms``, which then do not exist. Only when the import
    fails that way are the two operator schemas declared with ``torch.library`` and the import
    retried: classification models never call them (detection models would, and fail there).
    """
    try:
        return importlib.import_module("torchvision")
    except ModuleNotFoundError:
        raise _missing("torchvision") from None
    except RuntimeError as e:
        if "torchvision::nms" not in str(e) and "torchvision::qnms" not in str(e):
            raise
    for name in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[name]
    if not _declared:
        lib = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 (schemas only)
        for schema in _TORCHVISION_OPS:
            lib.define(schema)
        _declared.append(lib)
    return importlib.import_module("torchvision")


def import_timm() -> ModuleType:
    """``timm`` (which imports torchvision: the workaround of ``import_torchvision`` applies)."""
    if importlib.util.find_spec("timm") is None:
        raise _missing("timm")
    if importlib.util.find_spec("torchvision") is not None:
        import_torchvision()
    return importlib.import_module("timm")


def import_transformers() -> ModuleType:
    """``transformers`` (its vision models import torchvision when it is installed)."""
    if importlib.util.find_spec("transformers") is None:
        raise _missing("transformers")
    if importlib.util.find_spec("torchvision") is not None:
        import_torchvision()
    return importlib.import_module("transformers")


# ---- models by prefixed name ----------------------------------------------------------------

SOURCES = {
    "torchvision": "torchvision:NAME, a torchvision classification model (random init)",
    "timm": "timm:NAME, a timm model (random init)",
    "hf": "hf:CONFIG.json, a Hugging Face config file (random init, classification head)",
}
EXAMPLES = "torchvision:resnet18, timm:convnext_nano or hf:path/to/config.json"

# Keys an option may not set: weights are never downloaded, and the classes and input channels
# come from the data (or model.num_classes / model.in_channels).
_RESERVED = {
    "torchvision": ("weights", "num_classes", "progress"),
    "timm": (
        "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path",
        "num_classes", "in_chans",
    ),
    "hf": HF_RESERVED,
}  # fmt: skip
_WEIGHT_KEYS = ("weights", "pretrained", "pretrained_cfg", "checkpoint_path")


def external_source(name: str) -> tuple[str, str] | None:
    """``(source, rest)`` of a prefixed model name (``"timm:convnext_nano"`` gives ``("timm",
    "convnext_nano")``), or None for a zoo name (no colon). An unknown prefix or a missing
    name after it is a ConfigError."""
    text = str(name).strip()
    if ":" not in text:
        return None
    prefix, _, rest = text.partition(":")
    source = prefix.strip().lower()
    if source not in SOURCES:
        raise ConfigError(
            f"unknown model source '{prefix}'{did_you_mean(source, SOURCES)}; write "
            "torchvision:NAME, timm:NAME or hf:CONFIG.json"
        )
    if not rest.strip():
        raise ConfigError(f"model '{text}': no name after '{prefix}:'; write {SOURCES[source]}")
    return source, rest.strip()


def check_external(name: str, options: Mapping[str, Any], where: str = "model") -> dict:
    """Check a prefixed model name and its options before anything is built; return the options.

    The name must exist in its package (a did-you-mean otherwise), a ``hf:`` config file must be
    readable, and an option must not set what the data decides or ask for downloaded weights.
    Options of a Hugging Face model are config keys and are checked against the config here;
    those of torchvision and timm models are checked by their constructor when it is built.
    """
    source, rest = _source(name)
    for key, value in options.items():
        _refuse_reserved(source, name, key, where)
        check_bounds(value, f"{where}.{key}")
    if source == "torchvision":
        _torchvision_arch(rest)
    elif source == "timm":
        _timm_arch(rest)
    else:
        hf_setup(import_transformers(), rest, options, where)
    return dict(options)


def create_external(
    name: str, *, num_classes: int, in_channels: int | None, **options: Any
) -> nn.Module:
    """Build a prefixed model, randomly initialized, for ``num_classes`` classes.

    ``in_channels`` is the data's image channels (None: token ids, for a Hugging Face text
    model). timm takes it as ``in_chans``; a torchvision model built for 3 channels gets its
    first conv replaced by one of ``in_channels`` inputs (PyTorch's default initialization);
    a Hugging Face vision config gets it as ``num_channels``.
    """
    source, rest = _source(name)
    for key in options:
        _refuse_reserved(source, name, key, "model")
    label = f"{source}:{rest}"
    if source == "torchvision":
        tv = import_torchvision()
        builder = tv.models.get_model_builder(_torchvision_arch(rest))

        def build(**kw):
            return builder(weights=None, num_classes=num_classes, **kw)

        model = _construct(label, options, build)
        if in_channels is not None:
            _adapt_first_conv(model, in_channels, label)
        return model
    if source == "timm":
        timm = import_timm()
        arch = _timm_arch(rest)

        def build(**kw):
            chans = 3 if in_channels is None else in_channels
            return timm.create_model(
                arch, pretrained=False, num_classes=num_classes, in_chans=chans, **kw
            )

        return _construct(label, options, build)
    cls, config, _ = hf_setup(import_transformers(), rest, options, "model")
    config.num_labels = num_classes
    if in_channels is not None and hasattr(config, "num_channels"):
        config.num_channels = in_channels
    try:
        return cls(config)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        why = first_line(e)
        raise ConfigError(f"model '{label}': cannot build {cls.__name__}: {why}") from None


def external_inputs(name: str, options: Mapping[str, Any]) -> str:
    """What the prefixed model reads: ``"images"`` (N, C, H, W) or ``"tokens"`` (N, L) ids."""
    source, rest = _source(name)
    if source != "hf":
        return "images"
    return hf_setup(import_transformers(), rest, options, "model")[2]


def check_tokens_fit(
    name: str, options: Mapping[str, Any], *, vocab_size: int, seq_len: int, dataset: str
) -> None:
    """Refuse a Hugging Face text model whose embeddings cannot take the dataset's token ids
    (ids up to ``vocab_size - 1``) or its sequence length."""
    _, config, _ = hf_setup(import_transformers(), _source(name)[1], options, "model")
    for key, need, what in (
        ("vocab_size", vocab_size, "token ids"),
        ("max_position_embeddings", seq_len, "positions"),
    ):
        have = getattr(config, key, None)
        if isinstance(have, int) and have < need:
            data_key = "vocab_size" if key == "vocab_size" else "seq_len"
            raise ConfigError(
                f"model '{name}': {key} {have} is smaller than the {need} {what} of dataset "
                f"'{dataset}'; raise {key} (in the config or as model.{key}) or lower "
                f"data.{data_key}"
            )


def _source(name: str) -> tuple[str, str]:
    parsed = external_source(name)
    if parsed is None:
        raise ConfigError(f"model '{name}' is not a prefixed name; write {EXAMPLES}")
    return parsed


def _refuse_reserved(source: str, name: str, key: str, where: str) -> None:
    if key not in _RESERVED[source]:
        return
    if key in _WEIGHT_KEYS:
        why = "weights are never downloaded; start from trained weights with --init RUN_DIR|FILE"
    elif key in ("num_classes", "num_labels", "id2label", "label2id"):
        why = "the classes come from the data (or model.num_classes)"
    elif key in ("in_chans", "num_channels"):
        why = "the input channels come from the data (or model.in_channels)"
    elif key in ("dtype", "torch_dtype"):
        why = "models are built in float32"
    else:
        why = "it is set by the model name"
    raise ConfigError(f"{where}.{key}: not an option of model '{name}': {why}")


def _torchvision_arch(rest: str) -> str:
    tv = import_torchvision()
    arch = rest.lower()
    names = tv.models.list_models(module=tv.models)  # classification models only
    if arch not in names:
        raise ConfigError(
            f"unknown torchvision model '{rest}'{did_you_mean(arch, names)}; one of the "
            f"{len(names)} classification models of torchvision.models.list_models("
            "module=torchvision.models)"
        )
    return arch


def _timm_arch(rest: str) -> str:
    timm = import_timm()
    if timm.is_model(rest):
        return rest
    names = timm.list_models()
    raise ConfigError(
        f"unknown timm model '{rest}'{did_you_mean(rest, names)}; one of the {len(names)} "
        "names of timm.list_models()"
    )


def _construct(label: str, options: Mapping[str, Any], build) -> nn.Module:
    """``build(**options)``, with a constructor's refusal of an option as a ConfigError."""
    try:
        return build(**options)
    except ConfigError:
        raise
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        if not options:
            raise
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if unknown:
            key = unknown.group(1)
            allowed = _constructor_keys(build)
            listed = f"; allowed: {', '.join(allowed)}" if allowed else ""
            raise ConfigError(
                f"model.{key}: '{label}' has no option '{key}'{did_you_mean(key, allowed)}{listed}"
            ) from None
        given = ", ".join(f"{k}={show(v)}" for k, v in options.items())
        raise ConfigError(f"model '{label}' with {given}: {first_line(e)}") from None


def _constructor_keys(build) -> list[str]:
    """The keyword options of the class ``build`` makes (built on the meta device, no options)."""
    try:
        with torch.device("meta"):
            probe = build()
    except Exception:  # a model that cannot be built on meta: no list
        return []
    params = inspect.signature(type(probe).__init__).parameters.values()
    skip = {"self", "num_classes", "in_chans", "device", "dtype"}
    return [
        p.name
        for p in params
        if p.name not in skip
        and p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _adapt_first_conv(model: nn.Module, in_channels: int, label: str) -> None:
    """Replace the first Conv2d (torchvision builds it for 3 channels) by one that reads
    ``in_channels``, with the same geometry and PyTorch's default initialization."""
    found = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None:
        raise ConfigError(
            f"model '{label}' has no Conv2d to read {in_channels} input channels; use data "
            "with 3 channels"
        )
    path, conv = found
    if conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise ConfigError(
            f"model '{label}': its first conv '{path}' is grouped ({conv.groups} groups), so it "
            f"cannot be rebuilt for {in_channels} input channels; use data with "
            f"{conv.in_channels} channels"
        )
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, new)
