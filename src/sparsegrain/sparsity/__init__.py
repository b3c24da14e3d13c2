"""Masks on a model: which layers are pruned, masks as parametrizations, coupled filters, masked
BatchNorms, and the handle ``sparsify_`` returns (``handle``)."""
