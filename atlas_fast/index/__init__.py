"""Document index: exact search, incremental updates, staleness-driven refresh and sharding.

Every index implements the `Index` protocol; `open_index` / `load_index` choose the kind.
"""

from atlas_fast.index.document_index import DocumentIndex, IndexFileError
from atlas_fast.index.factory import load_index, open_index
from atlas_fast.index.faiss_interop import from_faiss, to_faiss
from atlas_fast.index.merge_topk import merge_topk
from atlas_fast.index.protocol import Index
from atlas_fast.index.sharded import ShardedIndex
from atlas_fast.index.torch_index import TorchDocumentIndex

__all__ = [
    "DocumentIndex",
    "Index",
    "IndexFileError",
    "ShardedIndex",
    "TorchDocumentIndex",
    "from_faiss",
    "load_index",
    "merge_topk",
    "open_index",
    "to_faiss",
]
