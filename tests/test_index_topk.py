"""Fused score-and-top-k: the chunked reference against a brute-force oracle, the Triton kernel against the reference.

The kernel runs under TRITON_INTERPRET=1 on CPU (tiny shapes: the interpreter is slow);
the CUDA cases, larger and in bf16, are behind the gpu marker.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas_fast.reference.index_topk import MAX_ID, pack_keys, search_ref, unpack_keys


def _oracle(queries, rows, ids, k):
    """Full score matrix, then a sort by (score desc, id asc); −inf/−1 padding."""
    scores = (queries.to(rows.dtype).double() @ rows.double().T).float()
    out_scores = torch.full((queries.shape[0], k), float("-inf"))
    out_ids = torch.full((queries.shape[0], k), -1, dtype=torch.int64)
    for q in range(queries.shape[0]):
        order = sorted(range(rows.shape[0]), key=lambda r: (-scores[q, r].item(), ids[r].item()))[:k]
        out_scores[q, : len(order)] = scores[q, order]
        out_ids[q, : len(order)] = ids[order]
    return out_scores, out_ids


def _corpus(n, d, seed=0, duplicates=True):
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(-3, 4, (n, d), generator=generator).float()  # small integers: exact sums, many ties
    if duplicates and n > 4:
        rows[n // 2] = rows[1]
    ids = torch.randperm(50 * n + 7, generator=generator)[:n]
    return rows, ids


def test_keys_round_trip_and_order():
    scores = torch.tensor([1.5, -2.0, 0.0, -0.0, -1e30, 3e38, 1.5])
    ids = torch.tensor([5, 7, 9, 1, 3, MAX_ID - 1, 4])
    got_scores, got_ids = unpack_keys(pack_keys(scores, ids))
    assert torch.equal(got_ids, ids) and torch.equal(got_scores, scores + 0.0)
    order = pack_keys(scores, ids).argsort(descending=True)
    assert ids[order].tolist() == [MAX_ID - 1, 4, 5, 1, 9, 7, 3]  # equal scores: the smaller id first; -0 == +0


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60), d=st.integers(1, 9), k=st.integers(1, 70), chunk=st.integers(1, 64), seed=st.integers(0, 99)
)
def test_reference_equals_the_oracle(n, d, k, chunk, seed):
    rows, ids = _corpus(n, d, seed)
    queries = torch.randint(-3, 4, (3, d), generator=torch.Generator().manual_seed(seed + 1)).float()
    scores, found = search_ref(queries, rows, ids, k, chunk_rows=chunk)
    want_scores, want_ids = _oracle(queries, rows, ids, k)
    assert torch.equal(found, want_ids)
    assert torch.equal(scores, want_scores)


def test_reference_half_rows_round_queries_like_atlas():
    rows = torch.randn(40, 8).half()
    queries = torch.randn(2, 8)
    scores, _ = search_ref(queries, rows, torch.arange(40), 40)
    atlas = (queries.half().float() @ rows.float().T).sort(dim=1, descending=True).values
    torch.testing.assert_close(scores, atlas)


@pytest.mark.interpret
@pytest.mark.parametrize(
    "n_queries, n_rows, dim, k, dtype",
    [(3, 90, 12, 5, torch.float32), (17, 70, 20, 16, torch.float32), (2, 40, 8, 60, torch.float32),
     (4, 100, 33, 9, torch.float16)],
)  # fmt: skip
def test_kernel_equals_the_reference(n_queries, n_rows, dim, k, dtype):
    from atlas_fast.kernels.index_topk import search_triton

    rows, ids = _corpus(n_rows, dim)
    rows = rows.to(dtype)
    queries = torch.randint(-3, 4, (n_queries, dim), generator=torch.Generator().manual_seed(5)).float()
    scores, found = search_triton(queries, rows, ids, k)
    want_scores, want_ids = search_ref(queries, rows, ids, k)
    assert torch.equal(found, want_ids)  # ties included: exact small-integer scores
    assert torch.equal(scores, want_scores)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_queries, k", [(1, 100), (64, 100), (130, 128), (5, 7)])
def test_kernel_on_cuda(dtype, n_queries, k):
    from atlas_fast.kernels.index_topk import search_triton

    rows, ids = _corpus(200_003, 96)
    rows, ids = rows.to("cuda", dtype), ids.cuda()
    queries = torch.randint(-3, 4, (n_queries, 96), generator=torch.Generator().manual_seed(5)).float().cuda()
    scores, found = search_triton(queries, rows, ids, k)
    want_scores, want_ids = search_ref(queries, rows, ids, k)
    assert torch.equal(found, want_ids)
    torch.testing.assert_close(scores, want_scores)
