"""Global top-k from per-shard top-k lists: the C++ merge against torch and numpy.

Baseline: torch.topk over the concatenated candidates (what a Python sharded
index would write). The C++ merge also breaks ties by id and skips padding.
"""

import numpy as np
import pytest
import torch
from harness import run_provider

from atlas_fast.index import merge_topk

PROVIDERS = ["torch_topk", "numpy_argpartition", "c_ext"]
SHAPES = [(8, 32, 100), (8, 1024, 100)]  # (shards, queries, k)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("n_shards", "n_queries", "k"), SHAPES)
def test_merge_topk(benchmark, provider, n_shards, n_queries, k):
    rng = np.random.default_rng(0)
    scores = [rng.standard_normal((n_queries, k)).astype(np.float32) for _ in range(n_shards)]
    ids = [rng.integers(0, 10**9, (n_queries, k)) for _ in range(n_shards)]

    if provider == "c_ext":

        def fn():
            return merge_topk(scores, ids, k)

    elif provider == "torch_topk":

        def fn():
            all_scores = torch.from_numpy(np.concatenate(scores, axis=1))
            all_ids = torch.from_numpy(np.concatenate(ids, axis=1))
            top, where = all_scores.topk(k, dim=1)
            return top, all_ids.gather(1, where)

    else:

        def fn():
            all_scores = np.concatenate(scores, axis=1)
            all_ids = np.concatenate(ids, axis=1)
            part = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]
            top = np.take_along_axis(all_scores, part, 1)
            order = np.argsort(-top, axis=1, kind="stable")
            return np.take_along_axis(top, order, 1), np.take_along_axis(np.take_along_axis(all_ids, part, 1), order, 1)

    run_provider(
        benchmark,
        fn,
        op="merge_topk",
        shape=f"shards={n_shards} q={n_queries} k={k}",
        mode="forward",
        provider=provider,
        baseline="torch_topk",
        device=torch.device("cpu"),
    )
