"""Approximate search after `to_faiss` (docs/faiss.md) against the exact bf16 DocumentIndex it was exported from.

N = 200,000 clustered unit vectors of d = 768 by default (ATLAS_FAST_BENCH_FAISS_N overrides; the
--benchmark-disable smoke run uses 5,000): 2,000 random centres, each row its centre plus noise of
0.8 its scale (two rows of one cluster have cosine ~0.6), so that approximate search meets the
structure of real embeddings rather than isotropic noise, on which no index can prune.
k = 100, a batch of 32 queries drawn like the rows. Each cell records recall@100 against the exact
index's top-100 and the bytes each row takes; the exact index is the baseline of the speed ratios.
Serving parameters are docs/faiss.md's: nprobe 32, efSearch 256, k_factor_rf 4.
"""

import math
import os

import numpy as np
import pytest
import torch
from harness import run_provider

from atlas_fast import _ext
from atlas_fast.index import DocumentIndex, to_faiss

faiss = pytest.importorskip("faiss")

DIM, K, BATCH = 768, 100, 32
PROVIDERS = {  # provider -> (faiss factory, serving parameters, bytes per row)
    "docindex_bf16": (None, None, 2 * DIM),
    "faiss_hnsw32": ("HNSW32", "efSearch=256", 4 * DIM + 2 * 32 * 4),
    "faiss_ivf_sq8": ("IVF{nlist},SQ8", "nprobe=32", DIM),
    # 4-bit fast-scan PQ: 8-bit PQ96's training (96 k-means of 256 centroids in 8 dimensions) takes faiss
    # minutes even on 5,000 rows; fast-scan is faiss's recommended form for this speed class.
    "faiss_ivf_pq96x4fs_refine": ("IVF{nlist},PQ96x4fs,RFlat", "nprobe=32,k_factor_rf=4", 48 + 4 * DIM),
}


def _clustered(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    vectors = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 50_000):  # chunked: no float64 temporary of the whole corpus
        count = min(50_000, n - start)
        chunk = centres[rng.integers(0, len(centres), count)] + 0.8 * rng.standard_normal((count, DIM), np.float32)
        vectors[start : start + count] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return vectors


@pytest.fixture(scope="module")
def n_docs(request):
    if request.config.getoption("benchmark_disable"):
        return 5_000
    return int(os.environ.get("ATLAS_FAST_BENCH_FAISS_N", 200_000))


@pytest.fixture(scope="module")
def corpus(n_docs):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, DIM), dtype=np.float32)
    index = DocumentIndex(DIM, "bfloat16")
    index.upsert(np.arange(n_docs, dtype=np.int64), _clustered(rng, centres, n_docs))
    queries = _clustered(rng, centres, BATCH)
    return index, queries, index.search(queries, K)[1]


@pytest.fixture(scope="module")
def served(corpus, n_docs):
    index = corpus[0]
    nlist = 2 ** round(math.log2(4 * math.sqrt(n_docs)))  # faiss's rule of thumb: 4·sqrt(N) lists
    built = {"docindex_bf16": index}
    for provider, (factory, parameters, _) in PROVIDERS.items():
        if factory is not None:
            built[provider] = to_faiss(index, factory.format(nlist=nlist))
            faiss.ParameterSpace().set_index_parameters(built[provider], parameters)
    return built, nlist


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_search(benchmark, corpus, served, n_docs, provider):
    _, queries, exact = corpus
    built, nlist = served
    index = built[provider]
    found = index.search(queries, K)[1]
    recall = np.mean([len(set(a.tolist()) & set(e.tolist())) / K for a, e in zip(found, exact, strict=True)])
    benchmark.extra_info.update(recall=float(recall), recall_k=K, bytes_per_row=PROVIDERS[provider][2])
    if provider == "docindex_bf16":
        benchmark.extra_info["isa"] = _ext.simd_paths()["bfloat16"]
    run_provider(
        benchmark,
        lambda: index.search(queries, K),
        op="approximate_search",
        shape=f"N={n_docs} d={DIM} k={K} batch={BATCH} nlist={nlist}",
        mode="search",
        provider=provider,
        baseline="docindex_bf16",
        device=torch.device("cpu"),
    )
