"""The package version, in one place (``sparsegrain.__version__``, ``sparsegrain --version``)."""

VERSION = "0.1.0"
