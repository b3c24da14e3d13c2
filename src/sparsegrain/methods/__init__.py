"""Registry of training methods; adding one is one short file with a ``Method`` subclass."""

from __future__ import annotations

from ..core.registry import Registry
from .admm import Admm
from .base import Method
from .campfire import Campfire, Dense, OneShot
from .feather import Feather

METHODS = Registry("method")
METHODS.register(Dense.name, Dense)
METHODS.register(Campfire.name, Campfire, aliases=("gmp",))
METHODS.register(OneShot.name, OneShot)
METHODS.register(Admm.name, Admm, aliases=("structadmm",))
METHODS.register(Feather.name, Feather)

__all__ = ["METHODS", "Method", "Campfire", "Dense", "OneShot"]
