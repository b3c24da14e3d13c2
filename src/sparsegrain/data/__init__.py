"""Datasets: the registry (``catalog``) and the file-format readers and loaders behind it.

- ``loader``: seeded epoch order, rank shards, batch-wise crop/flip and normalization, TensorLoader;
- ``idx``: MNIST / Fashion-MNIST IDX files (raw or gzip);
- ``cifar``: CIFAR-10/100 python pickles through a restricted unpickler;
- ``imagefolder``: ImageNet-style class folders decoded with PIL;
- ``synthetic``: generated images with learnable labels;
- ``tokens``: generated token sequences with learnable labels, and their loader.

The entry point is ``build_data(DataConfig, seed=...)`` (``catalog``).
"""

from .catalog import DATASETS, NORMALIZE, DataBundle, DataConfig, build_data, list_datasets

__all__ = ["DATASETS", "NORMALIZE", "DataBundle", "DataConfig", "build_data", "list_datasets"]
