"""Hugging Face models from a config file: the class to build, its config, what it reads.

A config names its ``model_type``; the class is the config's ``architectures[0]`` when given (a
sequence or image classification class), else the ``...ForImageClassification`` class of its
model type for a vision config (one with ``num_channels``) and ``...ForSequenceClassification``
for the others. Options are config keys, each checked against the config's own keys and the kind
of its value. The caller passes the ``transformers`` module, imported by
``external.import_transformers`` (so that the torchvision workaround applies).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from ..core.errors import ConfigError, did_you_mean
from ..core.validate import show

# Config keys an option may not set: the model type and class come from the config, the labels
# and channels from the data, the dtype is float32.
RESERVED = (
    "model_type", "architectures", "num_labels", "id2label", "label2id", "num_channels",
    "dtype", "torch_dtype", "transformers_version",
)  # fmt: skip
MAX_CONFIG_BYTES = 1 << 20  # a Hugging Face config.json is a few kilobytes


def hf_setup(tr: ModuleType, rest: str, options: Mapping[str, Any], where: str):
    """``(model class, config with options applied, "images" | "tokens")`` of ``hf:rest``,
    with ``tr`` the ``transformers`` module (``external.import_transformers``)."""
    path, raw = _read_hf_config(rest)
    configuration_auto, modeling_auto = (
        tr.models.auto.configuration_auto,
        tr.models.auto.modeling_auto,
    )
    model_type = raw.get("model_type")
    known = configuration_auto.CONFIG_MAPPING_NAMES
    if not isinstance(model_type, str) or not model_type:
        raise ConfigError(
            f"Hugging Face config {path}: no 'model_type' key; a config.json names its model "
            'type, e.g. "model_type": "bert"'
        )
    if model_type not in known:
        raise ConfigError(
            f"Hugging Face config {path}: unknown model_type '{model_type}'"
            f"{did_you_mean(model_type, known)}; transformers {tr.__version__} does not have it"
        )
    kwargs = {k: v for k, v in raw.items() if k != "model_type"}
    try:
        config = tr.AutoConfig.for_model(model_type, **kwargs)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ConfigError(f"Hugging Face config {path}: {first_line(e)}") from None
    _apply_hf_options(config, options, f"hf:{rest}", where)
    heads = {
        "tokens": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        "images": modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    }
    classes = {c: kind for kind, table in heads.items() for c in _class_names(table.values())}
    archs = raw.get("architectures")
    if archs:
        if not isinstance(archs, list) or not isinstance(archs[0], str):
            raise ConfigError(
                f"Hugging Face config {path}: 'architectures' must be a list of class names, "
                f"got {show(archs)}"
            )
        arch = archs[0]
        if arch not in classes:
            raise ConfigError(
                f"Hugging Face config {path}: architectures names '{arch}', not a sequence or "
                f"image classification model{did_you_mean(arch, classes)}; set it to a "
                "...ForSequenceClassification or ...ForImageClassification class, or remove it"
            )
        kind = classes[arch]
    else:
        kind = "images" if hasattr(config, "num_channels") else "tokens"
        table = heads[kind]
        if model_type not in table:
            head = "ImageClassification" if kind == "images" else "SequenceClassification"
            raise ConfigError(
                f"Hugging Face config {path}: model_type '{model_type}' has no ...For{head} "
                "model in transformers; choose a model type that has one"
            )
        arch = _class_names([table[model_type]])[0]
    cls = getattr(tr, arch, None)
    if cls is None:
        raise ConfigError(f"Hugging Face config {path}: transformers has no class '{arch}'")
    return cls, config, kind


def _class_names(values) -> list[str]:
    out = []
    for v in values:
        out.extend([v] if isinstance(v, str) else list(v))
    return out


def _read_hf_config(rest: str) -> tuple[Path, dict]:
    """The JSON mapping of a config file (or of ``config.json`` in a directory)."""
    path = Path(rest).expanduser()
    if path.is_dir():
        path = path / "config.json"
    what = f"Hugging Face config {path}"
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what}: file not found; give the path of a config.json") from None
    except OSError as e:
        raise ConfigError(f"{what}: cannot read it: {e.strerror or e}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what}: larger than {MAX_CONFIG_BYTES} bytes; not a config.json")
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: not UTF-8 text; a config is a JSON file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{what}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what}: expected a JSON object, got {type(raw).__name__}")
    return path, raw


def _apply_hf_options(config, options: Mapping[str, Any], label: str, where: str) -> None:
    """Set each option on the config; a key the config does not have, or a value of another
    kind than the config's own, is a ConfigError."""
    allowed = sorted(k for k in config.to_dict() if not k.startswith("_") and k not in RESERVED)
    for key, value in options.items():
        if key not in allowed:
            raise ConfigError(
                f"{where}.{key}: '{label}' has no config key '{key}'"
                f"{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}"
            )
        current = getattr(config, key, None)
        kind, got = _kind(current), _kind(value)
        widened = kind == "a number" and got == "an integer"
        if kind is not None and value is not None and got != kind and not widened:
            raise ConfigError(
                f"{where}.{key}: '{label}' takes {kind} (the config has "
                f"{show(current)}), got {show(value)}"
            )
        setattr(config, key, value)


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return None


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
