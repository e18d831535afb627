"""GPU-resident index shard: Atlas's expression vs the chunked reference and the fused Triton kernel (and faiss-cpu).

Atlas searches its fp16 shard with ``queries.half() @ embeddings`` then ``topk``, writing
a (queries × N) score matrix. Providers: `atlas_mm_topk` (that expression, the
baseline), `reference` (chunked mm + topk merge, what CPU tensors run), `triton`
(atlas_fast/kernels/index_topk.py, CUDA only), `faiss_cpu` (IndexFlatIP on the host, for scale).
N ∈ {1M, 4M} by default (ATLAS_FAST_BENCH_GPU_INDEX_N, comma-separated), d = 768,
queries ∈ {1, 64, 512}, k = 100; fp16 rows. extra_info carries `bytes_read` (the
shard's size) so bandwidth = bytes_read / time can be set against the GPU's peak.
Without CUDA, the --benchmark-disable smoke run exercises the CPU providers on 20,000
documents; a timed CPU run is skipped (bench_document_index.py measures the CPU index).
"""

import os

import pytest
import torch
from harness import run_provider

from atlas_fast.reference.index_topk import search_ref

DIM, K = 768, 100
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sizes() -> list[int]:
    return [int(n) for n in os.environ.get("ATLAS_FAST_BENCH_GPU_INDEX_N", "1000000,4000000").split(",")]


@pytest.fixture(scope="module", params=_sizes())
def shard(request):
    n = request.param
    if DEVICE.type != "cuda":
        if not request.config.getoption("benchmark_disable"):
            pytest.skip("GPU-resident search is measured on CUDA only")
        n = 20_000
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    rows = torch.empty((n, DIM), dtype=torch.float16, device=DEVICE)
    for start in range(0, n, 500_000):  # chunked: no fp32 temporary of the whole shard
        count = min(500_000, n - start)
        rows[start : start + count] = torch.randn(count, DIM, generator=generator, device=DEVICE).half()
    return rows, torch.arange(n, device=DEVICE)


@pytest.mark.parametrize("provider", ["atlas_mm_topk", "reference", "triton", "faiss_cpu"])
@pytest.mark.parametrize("n_queries", [1, 64, 512])
def test_index_topk(benchmark, shard, provider, n_queries):
    rows, ids = shard
    if provider == "triton" and DEVICE.type != "cuda":
        pytest.skip("the fused kernel runs on CUDA (its interpreter tests are in tests/test_index_topk.py)")
    queries = torch.randn(n_queries, DIM, device=DEVICE)
    if provider == "atlas_mm_topk":

        def fn():
            scores = queries.half() @ rows.T
            return scores.topk(K, dim=1)

    elif provider == "reference":

        def fn():
            return search_ref(queries, rows, ids, K)

    elif provider == "triton":
        from atlas_fast.kernels.index_topk import search_triton

        def fn():
            return search_triton(queries, rows, ids, K)

    else:
        faiss = pytest.importorskip("faiss")
        if rows.shape[0] > 1_000_000 and not benchmark.disabled:
            pytest.skip("faiss-cpu is shown for scale at N = 1M only")
        index = faiss.IndexFlatIP(DIM)
        index.add(rows.float().cpu().numpy())
        host_queries = queries.cpu().numpy()

        def fn():
            return index.search(host_queries, K)

    run_provider(
        benchmark,
        fn,
        op="index_topk",
        shape=f"N={rows.shape[0]:,} d={DIM} q={n_queries} k={K} fp16",
        mode="search",
        provider=provider,
        baseline="atlas_mm_topk",
        device=DEVICE,
    )
    benchmark.extra_info["bytes_read"] = rows.numel() * rows.element_size()
