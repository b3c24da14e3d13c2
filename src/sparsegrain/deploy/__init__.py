"""What makes the sparse model smaller and faster: compaction, the compressed file format, sparse
kernels, and export of a run."""
