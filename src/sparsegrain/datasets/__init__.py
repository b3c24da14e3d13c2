"""File-format readers and loaders behind ``sparsegrain.data``.

- ``loader``: seeded epoch order, rank shards, batch-wise crop/flip and normalization, TensorLoader;
- ``idx``: MNIST / Fashion-MNIST IDX files (raw or gzip);
- ``cifar``: CIFAR-10/100 python pickles through a restricted unpickler;
- ``imagefolder``: ImageNet-style class folders decoded with PIL;
- ``synthetic``: generated images with learnable labels.

The public entry point is ``sparsegrain.data.build_data``.
"""
