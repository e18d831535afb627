"""Exact top-k inner-product search over a matrix of document rows: chunked `torch.mm` + `torch.topk`.

The reference of atlas_fast/kernels/index_topk.py, and what `TorchDocumentIndex` runs on CPU
tensors. Atlas computes ``queries.half() @ embeddings`` and one `topk` over the
whole (q, N) matrix; here the documents go by chunks of ``chunk_rows`` and each
chunk's top-k is merged with the running top-k, so at most (q, chunk_rows) scores
exist at a time.

Order: higher score first, ties broken by the smaller id — the CPU index's rule.
Scores and ids travel packed in one int64 key, so `topk` over keys is that order
exactly: the high 32 bits are the fp32 score mapped to an order-preserving int32,
the low 32 bits are 0xFFFFFFFF − id (ids must lie in [0, 2³² − 1)). A key of
int64 min marks "no document" (fewer than k): id −1, score −inf.
"""

from __future__ import annotations

import torch

__all__ = ["EMPTY_KEY", "MAX_ID", "SEARCH_MAX_K", "pack_keys", "search_ref", "unpack_keys"]

MAX_ID = 2**32 - 1  # ids must be smaller: 0xFFFFFFFF − id stays in 32 bits, and −1 keeps its meaning
EMPTY_KEY = -(2**63)
SEARCH_MAX_K = 256  # the Triton kernel's largest k: its running lists of K_PAD ≥ k keys live in registers
_LOW_BITS = 0xFFFFFFFF


def _ordered_int32(scores: torch.Tensor) -> torch.Tensor:
    """fp32 -> int32 with the same order (−0.0 counts as +0.0, as in a float comparison)."""
    bits = (scores.float() + 0.0).view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def pack_keys(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(…) fp32 scores and int64 ids -> (…) int64 keys ordered by (score, then smaller id)."""
    return (_ordered_int32(scores).to(torch.int64) << 32) | (_LOW_BITS - ids)


def unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 keys -> (fp32 scores, int64 ids); empty keys become (−inf, −1)."""
    high = (keys >> 32).to(torch.int32)
    scores = (high ^ ((high >> 31) & 0x7FFFFFFF)).view(torch.float32)
    ids = _LOW_BITS - (keys & _LOW_BITS)
    empty = keys == EMPTY_KEY
    return scores.masked_fill(empty, float("-inf")), ids.masked_fill(empty, -1)


def search_ref(
    queries: torch.Tensor, rows: torch.Tensor, row_ids: torch.Tensor, k: int, chunk_rows: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k documents of each query.

    Rows in fp16/bf16 are scored as Atlas does (queries rounded to that dtype), in fp32 sums.

    Args:
        queries: (q, d) float.
        rows: (N, d) document vectors (fp32/fp16/bf16), on the queries' device.
        row_ids: (N,) int64 ids in [0, 2³² − 1).
        k: results per query.
        chunk_rows: documents scored per matmul.

    Returns:
        scores (q, k) float32 and ids (q, k) int64.
    """
    n_queries = queries.shape[0]
    best = torch.full((n_queries, k), EMPTY_KEY, dtype=torch.int64, device=queries.device)
    # Half-precision rows: queries rounded to the rows' dtype (Atlas's q.half()), products summed in fp32.
    query_rows = queries.to(rows.dtype).float()
    for start in range(0, rows.shape[0], chunk_rows):
        scores = query_rows @ rows[start : start + chunk_rows].float().T
        keys = pack_keys(scores, row_ids[start : start + chunk_rows][None, :])
        chunk_best = keys.topk(min(k, keys.shape[1]), dim=1).values
        best = torch.cat([best, chunk_best], dim=1).topk(k, dim=1).values
    return unpack_keys(best)
