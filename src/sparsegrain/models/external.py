"""Models users bring from torchvision, timm and Hugging Face transformers (none of them is a
dependency of sparsegrain: each is imported only when a model of it is asked for).

The importers here are the one place the project imports those packages, so the workaround
below is applied once, the same way, for the library, the CLI and the tests.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch

from ..core.errors import ConfigError

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
