"""Registry of training methods; adding one is one short file with a ``Method`` subclass."""

from __future__ import annotations

from ..core.registry import Registry
from .admm import Admm
from .base import Method
from .campfire import Campfire, Dense, OneShot
from .feather import Feather
from .torch_ao import TorchAo
from .torch_prune import TorchPrune

METHODS = Registry("method")
METHODS.register(Dense.name, Dense)
METHODS.register(Campfire.name, Campfire, aliases=("gmp",))
METHODS.register(OneShot.name, OneShot)
METHODS.register(Admm.name, Admm, aliases=("structadmm",))
METHODS.register(Feather.name, Feather)
# PyTorch's own pruning tools on Campfire's schedule: baselines on the same loop.
METHODS.register(TorchAo.name, TorchAo, aliases=("torch.ao", "torch.ao.pruning"))
METHODS.register(TorchPrune.name, TorchPrune, aliases=("torch.prune", "torch.nn.utils.prune"))

__all__ = ["METHODS", "Method", "Campfire", "Dense", "OneShot"]
