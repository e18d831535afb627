"""One place that chooses an index: host (C++ DocumentIndex) or device (TorchDocumentIndex), sharded or not."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from atlas_fast.index.document_index import DocumentIndex
from atlas_fast.index.protocol import Index
from atlas_fast.index.sharded import ShardedIndex, read_shards
from atlas_fast.index.torch_index import TorchDocumentIndex

__all__ = ["load_index", "open_index"]


def open_index(
    dim: int, dtype: str = "float32", device: str | torch.device | None = None, distributed: bool = False
) -> Index:
    """An empty index.

    Args:
        dim: embedding size d.
        dtype: storage precision, "float32", "float16", "bfloat16" or "int8" (host rows only).
        device: None keeps rows in host memory (the C++ DocumentIndex); a torch device keeps them
            there (TorchDocumentIndex, e.g. a GPU).
        distributed: shard over the torch.distributed world (ShardedIndex; this rank's shard on ``device``).
    """
    if distributed:
        return ShardedIndex(dim, dtype, device=device)
    return DocumentIndex(dim, dtype) if device is None else TorchDocumentIndex(dim, dtype, device)


def load_index(
    path: str | os.PathLike, device: str | torch.device | None = None, distributed: bool = False, mapped: bool = False
) -> Index:
    """An index written by ``save`` of the kind `open_index` makes for the same ``device`` and ``distributed``.

    A distributed index reads a directory of shards written by any number of ranks; the others read one file,
    or all the shards of such a directory into one index. ``mapped``: serve a host index file's rows from the
    file itself (`DocumentIndex.map`) instead of reading them.

    Raises:
        IndexFileError: the file or directory is not a valid atlas_fast index.
        ValueError: ``mapped`` with a device, a distributed index or a directory of shards.
    """
    if mapped:
        if device is not None or distributed or Path(path).is_dir():
            raise ValueError("mapped: only a host index file maps (no device, not distributed, not a directory)")
        return DocumentIndex.map(path)
    if distributed:
        return ShardedIndex.load(path, device=device)
    index = read_shards(path) if Path(path).is_dir() else DocumentIndex.load(path)
    return index if device is None else TorchDocumentIndex.from_document_index(index, device)
