"""sparsegrain: structured sparse training, and proof of what the structure is worth."""

__version__ = "0.1.0"
