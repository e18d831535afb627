"""Conversion between DocumentIndex and faiss, for users who want faiss's compressed indexes.

faiss is imported only when these functions are called.
"""

from __future__ import annotations

import numpy as np

from atlas_fast.index.arguments import CHUNK_ROWS
from atlas_fast.index.document_index import DocumentIndex

__all__ = ["from_faiss", "to_faiss"]


def to_faiss(index: DocumentIndex, faiss_index=None):
    """Copy the documents of ``index`` into a faiss index with ids.

    Args:
        index: the DocumentIndex.
        faiss_index: an empty faiss index over inner products, trained if it needs
            training (IVF-PQ, say); None builds an exact ``IndexIDMap2(IndexFlatIP)``.
            Indexes without ids of their own are wrapped in ``IndexIDMap2``.

    Returns:
        The faiss index holding every document under its id (vectors as float32).
    """
    import faiss

    if faiss_index is None:
        faiss_index = faiss.IndexFlatIP(index.dim)
    if faiss_index.d != index.dim:
        raise ValueError(f"faiss_index has dimension {faiss_index.d}; the DocumentIndex has {index.dim}")
    if faiss_index.ntotal:
        raise ValueError(f"faiss_index must be empty; it holds {faiss_index.ntotal} vectors")
    if not isinstance(faiss_index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        faiss_index = faiss.IndexIDMap2(faiss_index)
    ids = index.ids()
    for start in range(0, ids.size, CHUNK_ROWS):
        chunk = ids[start : start + CHUNK_ROWS]
        faiss_index.add_with_ids(index.get(chunk), chunk)
    return faiss_index


def from_faiss(faiss_index, dtype: str = "float32", step: int = 0) -> DocumentIndex:
    """Build a DocumentIndex from a faiss ``IndexIDMap``/``IndexIDMap2`` whose vectors can be reconstructed.

    Args:
        faiss_index: the faiss index (compressed indexes give back their decoded vectors).
        dtype: storage precision of the new index.
        step: embedding step recorded for every document.
    """
    import faiss

    if not isinstance(faiss_index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        raise ValueError("faiss_index must be an IndexIDMap or IndexIDMap2 (it carries the document ids)")
    ids = faiss.vector_to_array(faiss_index.id_map).astype(np.int64)
    index = DocumentIndex(faiss_index.d, dtype)
    inner = faiss.downcast_index(faiss_index.index)
    for start in range(0, ids.size, CHUNK_ROWS):
        count = min(CHUNK_ROWS, ids.size - start)
        index.upsert(ids[start : start + count], inner.reconstruct_n(start, count), step)
    return index
