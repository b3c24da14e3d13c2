"""The one training loop (``loop``) and grids of runs (``sweep``)."""
