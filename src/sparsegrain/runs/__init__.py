"""The run directory: resolved recipe, metrics, checkpoints, final weights, masks, summary."""
