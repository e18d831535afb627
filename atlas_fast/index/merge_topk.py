"""Exact global top-k from per-shard top-k lists (the C++ `merge_topk`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from atlas_fast import _ext

__all__ = ["merge_topk"]


def merge_topk(
    shard_scores: Sequence[np.ndarray], shard_ids: Sequence[np.ndarray], k: int, n_threads: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard search results into the global top-k of every query.

    Each shard answered the same q queries with its own best candidates. The
    result is the k best of their union per query, sorted by score (descending),
    ties broken by the smaller id. Candidates with id -1 are padding and are
    ignored; rows with fewer than k real candidates are padded with score -inf
    and id -1. An id present in two shards is kept twice (shards own disjoint ids).

    Args:
        shard_scores: one float array (q, k_s) per shard; converted to float32.
        shard_ids: one int array (q, k_s) per shard, same shapes; converted to int64.
        k: how many results per query, > 0.
        n_threads: OpenMP threads; 0 uses the runtime's default.

    Returns:
        scores float32 (q, k) and ids int64 (q, k).
    """
    if len(shard_scores) == 0 or len(shard_scores) != len(shard_ids):
        raise ValueError(
            f"shard_scores and shard_ids must be non-empty and of equal length; "
            f"got {len(shard_scores)} and {len(shard_ids)}"
        )
    if not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    n_queries = np.shape(shard_scores[0])[0] if np.ndim(shard_scores[0]) == 2 else -1
    for shard, (scores, ids) in enumerate(zip(shard_scores, shard_ids, strict=True)):
        if np.ndim(scores) != 2 or np.shape(scores)[0] != n_queries:
            raise ValueError(
                f"shard_scores[{shard}] must be 2-D (q, k_s) with the same q for every shard; "
                f"got shape {np.shape(scores)}"
            )
        if np.shape(ids) != np.shape(scores):
            raise ValueError(
                f"shard_ids[{shard}] must have the shape of shard_scores[{shard}] {np.shape(scores)}; "
                f"got {np.shape(ids)}"
            )
        if not np.issubdtype(np.asarray(ids).dtype, np.integer):
            raise ValueError(f"shard_ids[{shard}] must hold integers; got dtype {np.asarray(ids).dtype}")
    scores = np.ascontiguousarray(np.concatenate(shard_scores, axis=1), dtype=np.float32)
    ids = np.ascontiguousarray(np.concatenate(shard_ids, axis=1), dtype=np.int64)
    if np.isnan(scores).any() and np.isnan(scores[ids >= 0]).any():
        raise ValueError("shard_scores must not contain NaN for real candidates (id >= 0)")
    return _ext.native().merge_topk(scores, ids, int(k), int(n_threads))
