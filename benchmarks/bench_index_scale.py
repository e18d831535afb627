"""Exact search at N = 4,000,000 documents of d = 768: DocumentIndex int8 and bf16 against faiss's 8-bit scalar
quantizer (IndexScalarQuantizer QT_8bit), at 1, 8, 32 and 256 queries, k = 100.

The corpus (standard normal rows, 12 GB in fp32) is never held whole: it is made 100,000 rows at a time from a
seed per chunk, written into every index, and made again for the exact fp32 top-100 that recall is measured
against. So the three indexes (3.1 + 6.1 + 3.1 GB) fit a 24 GiB machine where bench_document_index.py's
fp32 copies would not. ATLAS_FAST_BENCH_SCALE_N overrides N; the --benchmark-disable smoke run uses 200,000.
"""

import os

import numpy as np
import pytest
import torch
from harness import run_provider

from atlas_fast import _ext
from atlas_fast.index import DocumentIndex

faiss = pytest.importorskip("faiss")

DIM, K, CHUNK = 768, 100, 100_000
CPU = torch.device("cpu")
BATCHES = [1, 8, 32, 256]
DTYPES = {"docindex_int8": "int8", "docindex_bf16": "bfloat16"}
PROVIDERS = ["faiss_sq_8bit", *DTYPES]


@pytest.fixture(scope="module")
def n_docs(request):
    if request.config.getoption("benchmark_disable"):
        return 200_000
    return int(os.environ.get("ATLAS_FAST_BENCH_SCALE_N", 4_000_000))


def corpus_chunks(n_docs: int):
    """(first id, rows) for each chunk of the corpus, the same rows every time."""
    for start in range(0, n_docs, CHUNK):
        rng = np.random.default_rng([0, start])
        yield start, rng.standard_normal((min(CHUNK, n_docs - start), DIM), dtype=np.float32)


@pytest.fixture(scope="module")
def queries():
    rng = np.random.default_rng(1)
    return {batch: rng.standard_normal((batch, DIM), dtype=np.float32) for batch in BATCHES}


@pytest.fixture(scope="module")
def indexes(n_docs):
    built = {name: DocumentIndex(DIM, dtype) for name, dtype in DTYPES.items()}
    quantised = faiss.IndexScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    for start, rows in corpus_chunks(n_docs):
        if start == 0:
            quantised.train(rows)  # QT_8bit learns each dimension's range from the first 100,000 rows
        quantised.add(rows)
        for index in built.values():
            index.upsert(np.arange(start, start + len(rows)), rows)
    return built | {"faiss_sq_8bit": quantised}


@pytest.fixture(scope="module")
def exact_ids(n_docs, queries):
    """batch -> the exact fp32 top-k ids of its queries, from one more pass over the corpus."""
    everything = torch.from_numpy(np.concatenate([queries[batch] for batch in BATCHES]))
    best_scores = torch.full((len(everything), K), -torch.inf)
    best_ids = torch.full((len(everything), K), -1, dtype=torch.int64)
    for start, rows in corpus_chunks(n_docs):
        scores = everything @ torch.from_numpy(rows).T
        ids = torch.arange(start, start + len(rows)).expand_as(scores)
        merged_scores, order = torch.cat([best_scores, scores], 1).topk(K, dim=1)
        best_ids = torch.cat([best_ids, ids], 1).gather(1, order)
        best_scores = merged_scores
    offsets = np.cumsum([0, *BATCHES])
    return {batch: best_ids[offsets[i] : offsets[i + 1]].numpy() for i, batch in enumerate(BATCHES)}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("batch", BATCHES)
def test_search_at_scale(benchmark, indexes, exact_ids, queries, n_docs, provider, batch):
    index, batch_queries = indexes[provider], queries[batch]

    def fn():
        return index.search(batch_queries, K)

    if provider in DTYPES:
        benchmark.extra_info["index_bytes"] = index.memory_bytes()
        benchmark.extra_info["isa"] = _ext.simd_paths()[DTYPES[provider]]
        row_bytes = _ext.native().row_bytes(DTYPES[provider], DIM)
    else:
        row_bytes = DIM
    benchmark.extra_info.update(
        bytes_per_row=row_bytes, bytes=n_docs * row_bytes, flops=2 * n_docs * DIM * batch, recall_k=K
    )
    found = run_provider(
        benchmark,
        fn,
        op="document_index_search_at_scale",
        shape=f"N={n_docs} d={DIM} k={K} batch={batch}",
        mode="forward",
        provider=provider,
        baseline="faiss_sq_8bit",
        device=CPU,
    )[1]
    exact = exact_ids[batch]
    benchmark.extra_info["recall"] = float(np.mean([np.isin(found[q], exact[q]).mean() for q in range(batch)]))
