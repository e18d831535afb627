"""Document index: DocumentIndex (fp32/fp16/bf16/int8) vs faiss and torch, search and in-place updates.

N = 1,000,000 documents of d = 768 by default (ATLAS_FAST_BENCH_INDEX_N overrides;
the --benchmark-disable smoke run uses 100,000), k = 100. The peers are faiss's exact
IndexFlatIP, its fp16 and 8-bit scalar quantizers (IndexScalarQuantizer QT_fp16, QT_8bit),
and torch's matmul + topk in fp32 (MKL) and bf16 (oneDNN). Indexes are built when a cell
first needs one, so `-k` selects what is built as well as what is timed.

Every search cell records the bytes of rows it must read once and its FLOPs (2·N·d·batch),
so BENCHMARKS.md prints GB/s and GFLOP/s; the quantised ones their recall@100 against exact
fp32 and bytes per row; each DocumentIndex cell the SIMD path that ran. The same run
measures the machine's limits, so the search figures can be read against them: memory read
bandwidth (a sum over 1 GiB), fp32 and bf16 GEMM throughput (torch.mm) and int8 GEMM
throughput (torch._int_mm, int32 accumulation). `test_search_against_limits` measures the
bandwidth and its type's GEMM rate again just before and after each of its bf16 and int8 cells
(8 to 64 queries), and prints the cell against the larger of those two limits. `test_open` times
opening a saved index, read (`load`) against memory-mapped (`map`).
"""

import functools
import os

import numpy as np
import pytest
import torch
from harness import best_seconds, run_provider

from atlas_fast import _ext
from atlas_fast.index import DocumentIndex

faiss = pytest.importorskip("faiss")

DIM, K = 768, 100
CPU = torch.device("cpu")
SEARCH_PROVIDERS = [
    "faiss_flat_ip",
    "faiss_sq_fp16",
    "faiss_sq_8bit",
    "torch_fp32_matmul_topk",
    "torch_bf16_matmul_topk",
    "docindex_f32",
    "docindex_f16",
    "docindex_bf16",
    "docindex_int8",
]
DTYPES = {"docindex_f32": "float32", "docindex_f16": "float16", "docindex_bf16": "bfloat16", "docindex_int8": "int8"}
# Bytes of one stored row: what one pass over the rows must read (an int8 row carries its fp32 scale).
ROW_BYTES = {"faiss_flat_ip": 4 * DIM, "faiss_sq_fp16": 2 * DIM, "faiss_sq_8bit": DIM}
ROW_BYTES |= {"torch_fp32_matmul_topk": 4 * DIM, "torch_bf16_matmul_topk": 2 * DIM}
ROW_BYTES |= {name: _ext.native().row_bytes(dtype, DIM) for name, dtype in DTYPES.items()}
FAISS_QUANTIZERS = {"faiss_sq_fp16": "QT_fp16", "faiss_sq_8bit": "QT_8bit"}


class _BuiltOnFirstUse(dict):
    """name -> index, each built by ``build(name)`` the first time a cell asks for it."""

    def __init__(self, build):
        super().__init__()
        self.build = build

    def __missing__(self, name):
        self[name] = built = self.build(name)
        return built


@pytest.fixture(scope="module")
def n_docs(request):
    if request.config.getoption("benchmark_disable"):
        return 100_000
    return int(os.environ.get("ATLAS_FAST_BENCH_INDEX_N", 1_000_000))


@pytest.fixture(scope="module")
def corpus(n_docs):
    rng = np.random.default_rng(0)
    vectors = np.empty((n_docs, DIM), dtype=np.float32)
    for start in range(0, n_docs, 100_000):  # chunked: no float64 temporary of the whole corpus
        vectors[start : start + 100_000] = rng.standard_normal((min(100_000, n_docs - start), DIM), dtype=np.float32)
    return np.arange(n_docs, dtype=np.int64), vectors


@pytest.fixture(scope="module")
def indexes(corpus):
    ids, vectors = corpus

    def build(name):
        if name in DTYPES:
            index = DocumentIndex(DIM, DTYPES[name])
            index.upsert(ids, vectors)
            return index
        if name == "faiss_flat_ip":
            index = faiss.IndexFlatIP(DIM)
        elif name in FAISS_QUANTIZERS:
            quantizer = getattr(faiss.ScalarQuantizer, FAISS_QUANTIZERS[name])
            index = faiss.IndexScalarQuantizer(DIM, quantizer, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors[:200_000])  # QT_8bit learns each dimension's range
        else:
            rows = torch.from_numpy(vectors)
            return rows.bfloat16() if "bf16" in name else rows
        index.add(vectors)
        return index

    return _BuiltOnFirstUse(build)


@pytest.mark.parametrize("provider", SEARCH_PROVIDERS)
@pytest.mark.parametrize("batch", [1, 8, 32, 64, 256])
def test_search(benchmark, indexes, n_docs, provider, batch):
    queries = np.random.default_rng(batch).standard_normal((batch, DIM), dtype=np.float32)
    index = indexes[provider]
    if provider.startswith("docindex"):

        def fn():
            return index.search(queries, K)

        benchmark.extra_info["index_bytes"] = index.memory_bytes()
        benchmark.extra_info["isa"] = _ext.simd_paths()[DTYPES[provider]]
    elif provider.startswith("faiss"):

        def fn():
            return index.search(queries, K)

    else:
        query_tensor = torch.from_numpy(queries).to(index.dtype)

        def fn():
            return (query_tensor @ index.T).float().topk(K, dim=1)

    if provider.startswith(("docindex", "faiss_sq")):
        # Recall@k of the stored precision against exact fp32 search (faiss IndexFlatIP), outside the timing.
        exact = indexes["faiss_flat_ip"].search(queries, K)[1]
        found = index.search(queries, K)[1]
        benchmark.extra_info["recall"] = float(np.mean([np.isin(found[q], exact[q]).mean() for q in range(batch)]))
        benchmark.extra_info["recall_k"] = K
    benchmark.extra_info["bytes_per_row"] = ROW_BYTES[provider]
    benchmark.extra_info["bytes"] = n_docs * ROW_BYTES[provider]
    benchmark.extra_info["flops"] = 2 * n_docs * DIM * batch
    run_provider(
        benchmark,
        fn,
        op="document_index_search",
        shape=f"N={n_docs} d={DIM} k={K} batch={batch}",
        mode="forward",
        provider=provider,
        baseline="faiss_flat_ip",
        device=CPU,
    )


@pytest.fixture(scope="module")
def gib_of_floats():
    """1 GiB of fp32: what the memory read limit sums."""
    return torch.ones(2**28, dtype=torch.float32)


def _gemm_4096(dtype: torch.dtype):
    """A 4096 x 4096 x 4096 product in dtype, ready to call: int8 runs torch._int_mm (int32 accumulation), and
    skips the cell where this CPU build of torch lacks it."""
    if dtype == torch.int8:
        a, b = (torch.randint(-127, 128, (4096, 4096), dtype=torch.int8) for _ in range(2))
        try:
            torch._int_mm(a[:32], b[:, :32])
        except RuntimeError as error:
            pytest.skip(f"torch._int_mm does not run on this CPU build: {error}")
        return functools.partial(torch._int_mm, a, b)
    a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
    return functools.partial(torch.mm, a, b)


def _machine_rates(memory: torch.Tensor, product) -> tuple[float, float]:
    """(bytes/s summed from memory, ops/s of the 4096^3 product) now: the best of 5 sums and of 3 products."""
    return memory.numel() * 4 / best_seconds(memory.sum, 5), 2 * 4096**3 / best_seconds(product, 3)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
@pytest.mark.parametrize("batch", [8, 32, 64])
def test_search_against_limits(benchmark, indexes, gib_of_floats, n_docs, dtype, batch):
    """A mid-batch search against the larger of its two limits: its rows over the memory bandwidth, its FLOPs
    over its type's GEMM rate. Both are measured just before and just after the cell and the faster of each is
    taken: this VM's bandwidth varies from minute to minute, so a limit measured far from its cell would make
    the ratio noise."""
    provider = next(name for name, stored in DTYPES.items() if stored == dtype)
    index = indexes[provider]
    queries = np.random.default_rng(batch).standard_normal((batch, DIM), dtype=np.float32)
    product = None if benchmark.disabled else _gemm_4096(torch.int8 if dtype == "int8" else torch.bfloat16)
    before = None if product is None else _machine_rates(gib_of_floats, product)

    def fn():
        return index.search(queries, K)

    n_bytes, flops = n_docs * ROW_BYTES[provider], 2 * n_docs * DIM * batch
    benchmark.extra_info.update(bytes=n_bytes, flops=flops, isa=_ext.simd_paths()[dtype])
    run_provider(
        benchmark,
        fn,
        op="search_against_limits",
        shape=f"N={n_docs} d={DIM} k={K} batch={batch}",
        mode="forward",
        provider=provider,
        baseline="docindex_bf16",
        device=CPU,
    )
    if before is not None:
        after = _machine_rates(gib_of_floats, product)
        bandwidth, gemm_rate = max(before[0], after[0]), max(before[1], after[1])
        limit = max(n_bytes / bandwidth, flops / gemm_rate)
        benchmark.extra_info.update(
            bandwidth=bandwidth,
            gemm_rate=gemm_rate,
            limit_seconds=limit,
            limit_ratio=benchmark.stats.stats.median / limit,
        )


@pytest.fixture(scope="module")
def saved_bf16(indexes, tmp_path_factory):
    """The bf16 index of the search cells, saved to a file (1.5 GB at N = 1M)."""
    path = tmp_path_factory.mktemp("index") / "bf16.afi"
    indexes["docindex_bf16"].save(path)
    return path


@pytest.mark.parametrize("provider", ["docindex_bf16_load", "docindex_bf16_map"])
def test_open(benchmark, saved_bf16, n_docs, provider):
    """Opening a saved bf16 index until it can search: `load` (verify the checksum, read and copy every row)
    against `map` (read the ids, steps and counts; the rows stay in the file's pages). The file is in the page
    cache: its first open after a reboot reads the disk as well."""
    opener = DocumentIndex.load if provider == "docindex_bf16_load" else DocumentIndex.map

    def fn():
        return opener(saved_bf16)

    if provider == "docindex_bf16_load":  # it reads the whole file; `map` reads only its ids, steps and counts
        benchmark.extra_info["bytes"] = saved_bf16.stat().st_size
    run_provider(
        benchmark,
        fn,
        op="index_open",
        shape=f"N={n_docs} d={DIM} bfloat16",
        mode="open",
        provider=provider,
        baseline="docindex_bf16_load",
        device=CPU,
    )


@pytest.mark.parametrize("provider", ["faiss_idmap2_remove_add", "docindex_f32"])
@pytest.mark.parametrize("fraction", [0.01, 0.10])
def test_update(benchmark, corpus, n_docs, provider, fraction):
    ids, vectors = corpus
    changed = np.random.default_rng(7).choice(n_docs, int(n_docs * fraction), replace=False)
    new_vectors = vectors[changed] * 0.5
    if provider == "docindex_f32":
        index = DocumentIndex(DIM)
        index.upsert(ids, vectors)

        def fn():
            index.upsert(changed, new_vectors, step=1)

    else:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        index.add_with_ids(vectors, ids)
        selector = faiss.IDSelectorBatch(changed)

        def fn():
            index.remove_ids(selector)
            index.add_with_ids(new_vectors, changed)

    run_provider(
        benchmark,
        fn,
        op="index_update",
        shape=f"N={n_docs} d={DIM} rows={fraction:.0%}",
        mode="upsert",
        provider=provider,
        baseline="faiss_idmap2_remove_add",
        device=CPU,
    )


@pytest.mark.parametrize("provider", ["torch_fp32_matmul_inplace", "docindex_f32", "docindex_bf16"])
def test_transform(benchmark, corpus, n_docs, provider):
    """A drift corrector's write: every row v <- v @ M in place (2·N·d² FLOPs), normalised after, as a refresh
    with refresh_corrector and index_normalize makes it; the peer is the same product as one MKL GEMM."""
    ids, vectors = corpus
    matrix = np.eye(DIM, dtype=np.float32) + 0.01 * np.random.default_rng(3).standard_normal((DIM, DIM), np.float32)
    if provider == "torch_fp32_matmul_inplace":
        rows, mapping = torch.from_numpy(vectors.copy()), torch.from_numpy(matrix)

        def fn():
            mapped = rows @ mapping
            rows.copy_(mapped / mapped.norm(dim=1, keepdim=True))

    else:
        index = DocumentIndex(DIM, DTYPES[provider])
        index.upsert(ids, vectors)

        def fn():
            index.transform(matrix, older_than=1, normalize=True)

    benchmark.extra_info["flops"] = 2 * n_docs * DIM * DIM
    run_provider(
        benchmark,
        fn,
        op="index_transform",
        shape=f"N={n_docs} d={DIM}",
        mode="transform",
        provider=provider,
        baseline="torch_fp32_matmul_inplace",
        device=CPU,
    )


@pytest.mark.parametrize("provider", ["memory_read_1GiB", "gemm_fp32_4096", "gemm_bf16_4096", "gemm_int8_4096"])
def test_machine_limits(benchmark, gib_of_floats, provider):
    if provider == "memory_read_1GiB":
        fn = gib_of_floats.sum
        benchmark.extra_info["bytes"] = gib_of_floats.numel() * 4
        work = f"{gib_of_floats.numel() * 4 / 1e9:.3f} GB"
    else:
        dtype = {"gemm_fp32_4096": torch.float32, "gemm_bf16_4096": torch.bfloat16}.get(provider, torch.int8)
        fn = _gemm_4096(dtype)
        benchmark.extra_info["flops"] = 2 * 4096**3
        work = f"{2 * 4096**3 / 1e9:.1f} {'GOP' if dtype == torch.int8 else 'GFLOP'}"
    benchmark.extra_info["work"] = work
    run_provider(
        benchmark,
        fn,
        op="machine_limits",
        shape=work,
        mode="forward",
        provider=provider,
        baseline=provider,
        device=CPU,
    )
