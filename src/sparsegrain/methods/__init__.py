"""Registry of training methods; adding one is one short file with a ``Method`` subclass."""

from __future__ import annotations

from ..registry import Registry
from .base import Method
from .campfire import Campfire, Dense, OneShot

METHODS = Registry("method")
METHODS.register(Dense.name, Dense)
METHODS.register(Campfire.name, Campfire, aliases=("gmp",))
METHODS.register(OneShot.name, OneShot)

__all__ = ["METHODS", "Method", "Campfire", "Dense", "OneShot"]
