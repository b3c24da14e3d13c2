"""The bottom layer: errors, registries, validation, safe files, tables, schedules, selection
maths, the torch.fx vocabulary and torch.distributed glue. Imports nothing else of sparsegrain."""
