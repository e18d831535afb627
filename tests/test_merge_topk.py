"""C++ merge of per-shard top-k lists against a numpy oracle."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from atlas_fast.index import merge_topk


def merge_topk_oracle(shard_scores, shard_ids, k):
    """Stable full sort of the union by (-score, id); padding ids dropped."""
    scores = np.concatenate(shard_scores, axis=1).astype(np.float32)
    ids = np.concatenate(shard_ids, axis=1).astype(np.int64)
    out_scores = np.full((scores.shape[0], k), -np.inf, dtype=np.float32)
    out_ids = np.full((scores.shape[0], k), -1, dtype=np.int64)
    for q in range(scores.shape[0]):
        real = ids[q] >= 0
        order = np.lexsort((ids[q][real], -scores[q][real]))[:k]
        out_scores[q, : len(order)] = scores[q][real][order]
        out_ids[q, : len(order)] = ids[q][real][order]
    return out_scores, out_ids


@st.composite
def shard_results(draw):
    n_shards = draw(st.integers(1, 4))
    n_queries = draw(st.integers(0, 5))
    widths = [draw(st.integers(0, 6)) for _ in range(n_shards)]
    # Few distinct scores so that ties, and the id tie-break, are common.
    score_values = st.sampled_from([-1.5, 0.0, 0.25, 2.0, 7.0])
    scores = [draw(hnp.arrays(np.float32, (n_queries, w), elements=score_values)) for w in widths]
    ids = [draw(hnp.arrays(np.int64, (n_queries, w), elements=st.integers(-1, 50))) for w in widths]
    return scores, ids, draw(st.integers(1, 8))


@settings(max_examples=200, deadline=None)
@given(shard_results())
def test_matches_oracle(native, case):
    scores, ids, k = case
    got_scores, got_ids = merge_topk(scores, ids, k)
    want_scores, want_ids = merge_topk_oracle(scores, ids, k)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_scores, want_scores)


def test_many_threads_agree_with_one(native):
    rng = np.random.default_rng(1)
    scores = [rng.standard_normal((300, 64)).astype(np.float32) for _ in range(3)]
    ids = [rng.permutation(1000)[:64].repeat(300).reshape(64, 300).T.copy() for _ in range(3)]
    single = merge_topk(scores, ids, 50, n_threads=1)
    multi = merge_topk(scores, ids, 50, n_threads=2)
    np.testing.assert_array_equal(single[1], multi[1])
    np.testing.assert_array_equal(single[1], merge_topk_oracle(scores, ids, 50)[1])


def test_converts_float64_and_int32_inputs(native):
    scores, ids = merge_topk([np.array([[0.5, 2.0]])], [np.array([[3, 4]], dtype=np.int32)], 1)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert ids.tolist() == [[4]]


@pytest.mark.parametrize(
    ("scores", "ids", "k", "message"),
    [
        ([], [], 1, "non-empty"),
        ([np.zeros((2, 3))], [np.zeros((2, 3), dtype=np.int64)], 0, "k must be a positive integer"),
        ([np.zeros((2, 3))], [np.zeros((2, 2), dtype=np.int64)], 1, r"shard_ids\[0\] must have the shape"),
        (
            [np.zeros((2, 3)), np.zeros((3, 3))],
            [np.zeros((2, 3), dtype=np.int64), np.zeros((3, 3), dtype=np.int64)],
            1,
            r"shard_scores\[1\]",
        ),
        ([np.zeros(3)], [np.zeros(3, dtype=np.int64)], 1, r"shard_scores\[0\] must be 2-D"),
        ([np.zeros((1, 2))], [np.zeros((1, 2), dtype=np.float32)], 1, "must hold integers"),
        ([np.array([[np.nan, 1.0]])], [np.array([[1, 2]])], 1, "NaN"),
    ],
)
def test_bad_input_names_the_argument(native, scores, ids, k, message):
    with pytest.raises(ValueError, match=message):
        merge_topk(scores, ids, k)


def test_nan_in_padding_is_ignored(native):
    scores, ids = merge_topk([np.array([[np.nan, 1.0]], dtype=np.float32)], [np.array([[-1, 2]])], 2)
    assert ids.tolist() == [[2, -1]]
    assert scores[0, 1] == -np.inf
