"""Document index: exact search, incremental updates, staleness-driven refresh and sharding."""

from atlas_fast.index.document_index import DocumentIndex, IndexFileError
from atlas_fast.index.faiss_interop import from_faiss, to_faiss
from atlas_fast.index.merge import merge_topk
from atlas_fast.index.sharded import ShardedIndex
from atlas_fast.index.torch_index import TorchDocumentIndex

__all__ = [
    "DocumentIndex",
    "IndexFileError",
    "ShardedIndex",
    "TorchDocumentIndex",
    "from_faiss",
    "merge_topk",
    "to_faiss",
]
