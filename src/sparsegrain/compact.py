"""``sparsegrain.compact``: the public name of ``sparsegrain.deploy.compact``."""

from .deploy.compact import *  # noqa: F403  (the same names, under the public path)
from .deploy.compact import __all__  # noqa: F401
