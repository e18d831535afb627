"""Fused score-and-top-k over a GPU-resident document shard: the (queries × N) score matrix is never written.

Algorithm: program (i, s) owns BLOCK_Q queries and the s-th slice of the documents.
It walks its slice in tiles of K_PAD rows: a (BLOCK_Q, K_PAD) score tile from
tl.dot over BLOCK_D-wide slabs of the embedding (fp32 accumulation), packed with the
documents' ids into int64 keys (score high, 0xFFFFFFFF − id low; see
atlas_fast/reference/index_topk.py), then merged into a running per-query top-K_PAD
held in registers: the tile is sorted ascending, its elementwise maximum with the
descending running list holds the K_PAD best keys of both as a bitonic sequence, and
one bitonic merge sorts that (Batcher: one sort and one merge per tile, which keeps
registers and compile time low).
A tile whose best key beats no query's current K-th key is skipped before any
sorting — after the first few tiles almost all are. Each program writes K_PAD keys
per query; a second, small pass (torch.topk over SPLITS·K_PAD keys per query) merges
the slices. Memory traffic: the shard once per BLOCK_Q queries, plus
q · SPLITS · K_PAD keys instead of q · N scores.

Queries are cast to the rows' dtype (Atlas's ``q.half()``); fp32 rows use IEEE fp32
dots, so results equal the reference's exactly up to summation order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from atlas_fast._dispatch import interpreting
from atlas_fast.kernels.launch import multiprocessor_count
from atlas_fast.reference.index_topk import EMPTY_KEY, unpack_keys

_EMPTY: tl.constexpr = tl.constexpr(EMPTY_KEY)


@triton.jit
def _pack(scores, ids):
    """fp32 scores, int64 ids -> int64 keys ordered by (score, smaller id)."""
    bits = (scores + 0.0).to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (ordered.to(tl.int64) << 32) | (0xFFFFFFFF - ids)


@triton.jit
def _score_topk_kernel(
    q_ptr, rows_ptr, ids_ptr, out_ptr, n_queries, n_rows, dim, rows_per_split,
    stride_q, stride_r, stride_o,
    BLOCK_Q: tl.constexpr, K_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    queries = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    query_ok = queries < n_queries
    first = pid_s * rows_per_split
    last = tl.minimum(first + rows_per_split, n_rows)
    running = tl.full((BLOCK_Q, K_PAD), _EMPTY, tl.int64)
    kth = tl.full((BLOCK_Q,), _EMPTY, tl.int64)  # the K_PAD-th best key of each query so far
    for start in range(first, last, K_PAD):  # tiles of K_PAD documents, the running list's length
        cols = start + tl.arange(0, K_PAD)
        col_ok = cols < last
        acc = tl.zeros((BLOCK_Q, K_PAD), tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            dim_ok = dims < dim
            document = tl.load(rows_ptr + cols[None, :] * stride_r + dims[:, None],
                               mask=col_ok[None, :] & dim_ok[:, None], other=0.0)  # fmt: skip
            query = tl.load(q_ptr + queries[:, None] * stride_q + dims[None, :],
                            mask=query_ok[:, None] & dim_ok[None, :], other=0.0).to(document.dtype)  # fmt: skip
            acc = tl.dot(query, document, acc, input_precision=INPUT_PRECISION)
        ids = tl.load(ids_ptr + cols, mask=col_ok, other=0)
        keys = tl.where(col_ok[None, :], _pack(acc, ids[None, :]), _EMPTY)
        # Only tiles that improve some query's list pay for the sort.
        if tl.max((tl.max(keys, axis=1) > kth).to(tl.int32), axis=0) > 0:
            # running is sorted descending, the tile ascending: their elementwise maximum holds the K_PAD
            # largest keys of both as a bitonic sequence, which one bitonic merge sorts (Batcher's merge).
            best = tl.maximum(running, tl.sort(keys, dim=1))
            running = tl.bitonic_merge(best, dim=1, descending=True)
            kth = tl.min(running, axis=1)
    out = out_ptr + queries[:, None] * stride_o + pid_s * K_PAD + tl.arange(0, K_PAD)[None, :]
    tl.store(out, running, mask=query_ok[:, None])


def _splits(n_rows: int, n_query_blocks: int, block_n: int) -> int:
    """Document slices per query block: enough programs to fill the GPU, each slice ≥ a few tiles."""
    target = 4 if interpreting() else 4 * multiprocessor_count()  # the interpreter: few programs, small shapes
    wanted = max(1, target // n_query_blocks)
    return max(1, min(wanted, triton.cdiv(n_rows, 4 * block_n)))


def _launch_config(n_queries: int, k: int, row_dtype: torch.dtype) -> tuple[int, int, int, int]:
    """BLOCK_Q, K_PAD (= BLOCK_N, the running list's length), BLOCK_D and num_warps.

    The running list and the tile being sorted are (BLOCK_Q, K_PAD) int64 each: 16 queries
    per program keep them in registers up to K_PAD = 256 (8 warps from K_PAD = 256 on).
    K_PAD is at least 64 on a GPU so that a score tile is a reasonable dot.
    """
    k_pad = max(16, triton.next_power_of_2(k))
    if interpreting():
        return 16, k_pad, 32, 4
    k_pad = max(64, k_pad)
    block_d = 16 if row_dtype == torch.float32 else 64  # fp32 rows: IEEE FMA dots hold their slabs in registers
    return 16, k_pad, block_d, 8 if k_pad >= 128 else 4


def search_triton(queries: torch.Tensor, rows: torch.Tensor, row_ids: torch.Tensor, k: int):
    """Top-k of every query over ``rows``; same contract as `search_ref`."""
    n_queries, dim = queries.shape
    n_rows = rows.shape[0]
    block_q, k_pad, block_d, num_warps = _launch_config(n_queries, k, rows.dtype)
    n_query_blocks = triton.cdiv(n_queries, block_q)
    splits = _splits(n_rows, n_query_blocks, k_pad)
    rows_per_split = triton.cdiv(triton.cdiv(n_rows, splits), k_pad) * k_pad
    splits = max(1, triton.cdiv(n_rows, rows_per_split))
    candidates = torch.empty((n_queries, splits * k_pad), dtype=torch.int64, device=queries.device)
    queries = queries.contiguous()
    rows = rows.contiguous()
    precision = "ieee" if rows.dtype == torch.float32 else "tf32"  # exact fp32 rows; halves use tensor cores
    wrap_triton(_score_topk_kernel)[(n_query_blocks, splits)](
        queries, rows, row_ids, candidates, n_queries, n_rows, dim, rows_per_split,
        queries.stride(0), rows.stride(0), candidates.stride(0),
        BLOCK_Q=block_q, K_PAD=k_pad, BLOCK_D=block_d, INPUT_PRECISION=precision, num_warps=num_warps,
    )  # fmt: skip
    best = candidates.topk(k, dim=1).values if candidates.shape[1] >= k else candidates
    if best.shape[1] < k:  # fewer candidates than k can only mean fewer documents than k
        padding = torch.full((n_queries, k - best.shape[1]), EMPTY_KEY, dtype=torch.int64, device=best.device)
        best = torch.cat([best, padding], dim=1)
    return unpack_keys(best)
