"""Conversion between atlas_fast's indexes and faiss, for approximate search where exact search is too slow.

Export an index to a faiss index for serving (IVF-PQ or HNSW, say: docs/faiss.md has the recipe),
and import a faiss index back into a DocumentIndex. faiss is imported only when these functions
are called.
"""

from __future__ import annotations

import numpy as np

from atlas_fast.index.arguments import CHUNK_ROWS
from atlas_fast.index.document_index import DocumentIndex
from atlas_fast.index.protocol import Index

__all__ = ["from_faiss", "to_faiss"]


def _empty_faiss_index(dim: int, factory: str | None):
    import faiss

    if factory is None:
        return faiss.IndexFlatIP(dim)
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "no reason given"
        raise ValueError(f"faiss_index {factory!r} is not a faiss index_factory string ({first_line})") from None


def to_faiss(index: Index, faiss_index=None, *, train_rows: int = 200_000, seed: int = 0):
    """Copy the documents of ``index`` into a faiss index with ids, over inner products.

    Args:
        index: a DocumentIndex or TorchDocumentIndex (any dtype); a ShardedIndex when every rank calls this
            (each gets the whole faiss index).
        faiss_index: None: an exact ``IndexFlatIP``; a faiss index_factory string ("HNSW32", "IVF4096,PQ96",
            "IVF4096,PQ96,RFlat", ...): that index over inner products, trained here if it needs training; or
            an empty faiss index object over inner products, trained if it needs training. Indexes without ids
            of their own are wrapped in ``IndexIDMap2``.
        train_rows: at most this many documents, sampled uniformly with ``seed``, train an index that needs
            training (faiss suggests 30 to 256 per IVF list).

    Returns:
        The faiss index holding every document under its id (vectors as float32).
    """
    import faiss

    if faiss_index is None or isinstance(faiss_index, str):
        faiss_index = _empty_faiss_index(index.dim, faiss_index)
    if faiss_index.d != index.dim:
        raise ValueError(f"faiss_index has dimension {faiss_index.d}; the index has {index.dim}")
    if faiss_index.ntotal:
        raise ValueError(f"faiss_index must be empty; it holds {faiss_index.ntotal} vectors")
    if faiss_index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError("faiss_index must rank by inner product (METRIC_INNER_PRODUCT), as atlas_fast's indexes do")
    if train_rows < 1:
        raise ValueError(f"train_rows must be at least 1; got {train_rows}")
    ids = index.ids()
    if not faiss_index.is_trained:
        sample = ids
        if ids.size > train_rows:
            sample = np.sort(np.random.default_rng(seed).choice(ids, train_rows, replace=False))
        faiss_index.train(index.get(sample))
    if not isinstance(faiss_index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        faiss_index = faiss.IndexIDMap2(faiss_index)
    for start in range(0, ids.size, CHUNK_ROWS):
        chunk = ids[start : start + CHUNK_ROWS]
        faiss_index.add_with_ids(index.get(chunk), chunk)
    return faiss_index


def from_faiss(faiss_index, dtype: str = "float32", step: int = 0) -> DocumentIndex:
    """Build a DocumentIndex from a faiss ``IndexIDMap``/``IndexIDMap2`` whose vectors can be reconstructed.

    Compressed indexes (PQ, SQ) give back their decoded vectors, not the originals: re-embed (a full refresh)
    where the exact vectors matter.

    Args:
        faiss_index: the faiss index; an IVF index inside it gets a direct map (faiss needs one to reconstruct).
        dtype: storage precision of the new index.
        step: embedding step recorded for every document.
    """
    import faiss

    if not isinstance(faiss_index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        raise ValueError("faiss_index must be an IndexIDMap or IndexIDMap2 (it carries the document ids)")
    ids = faiss.vector_to_array(faiss_index.id_map).astype(np.int64)
    index = DocumentIndex(faiss_index.d, dtype)
    inner = faiss.downcast_index(faiss_index.index)
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        ivf.make_direct_map()  # IVF lists hold rows in list order: reconstruction needs the map from row to list
    for start in range(0, ids.size, CHUNK_ROWS):
        count = min(CHUNK_ROWS, ids.size - start)
        index.upsert(ids[start : start + count], inner.reconstruct_n(start, count), step)
    return index
