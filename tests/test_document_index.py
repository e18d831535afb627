"""DocumentIndex: a state machine against a numpy oracle, faiss parity, staleness, concurrency, persistence."""

import itertools
import os
import threading
import time

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from atlas_fast.index import DocumentIndex, IndexFileError, from_faiss, to_faiss
from atlas_fast.testing import clustered_embeddings

DIM = 6


def oracle_search(vectors: dict, queries: np.ndarray, k: int):
    """Exact search by a stable sort over (-score, id); vectors are small integers so scores are exact."""
    ids = np.array(sorted(vectors), dtype=np.int64)
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(queries), k), -1, dtype=np.int64)
    if ids.size:
        matrix = np.stack([vectors[i] for i in ids]).astype(np.float64)
        for q, query in enumerate(queries.astype(np.float64)):
            scores = matrix @ query
            order = np.lexsort((ids, -scores))[:k]
            out_scores[q, : order.size] = scores[order]
            out_ids[q, : order.size] = ids[order]
    return out_scores, out_ids


small_vectors = st.lists(st.integers(-3, 3), min_size=DIM, max_size=DIM)


class IndexMachine(RuleBasedStateMachine):
    """Random upsert/remove/search sequences; ties are frequent, so the id tie-break is exercised."""

    def __init__(self):
        super().__init__()
        self.index = DocumentIndex(DIM, "float32", n_threads=2)
        self.oracle = {}

    @rule(ids=st.lists(st.integers(0, 40), min_size=1, max_size=8), rows=st.data())
    def upsert(self, ids, rows):
        vectors = np.array([rows.draw(small_vectors) for _ in ids], dtype=np.float32)
        self.index.upsert(ids, vectors, step=1)
        for doc_id, vector in zip(ids, vectors, strict=True):  # the last duplicate wins
            self.oracle[doc_id] = vector

    @rule(data=st.data())
    def remove(self, data):
        if not self.oracle:
            return
        doomed = data.draw(st.lists(st.sampled_from(sorted(self.oracle)), min_size=1, max_size=5, unique=True))
        self.index.remove(doomed)
        for doc_id in doomed:
            del self.oracle[doc_id]

    @rule(doc_id=st.integers(41, 50))
    def remove_unknown_is_refused(self, doc_id):
        before = len(self.index)
        with pytest.raises(KeyError):
            self.index.remove([doc_id])
        assert len(self.index) == before

    @rule(queries=st.lists(small_vectors, min_size=1, max_size=4), k=st.integers(1, 12))
    def search(self, queries, k):
        queries = np.array(queries, dtype=np.float32)
        got_scores, got_ids = self.index.search(queries, k)
        want_scores, want_ids = oracle_search(self.oracle, queries, k)
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_array_equal(got_scores, want_scores)

    @invariant()
    def same_documents(self):
        assert len(self.index) == len(self.oracle)
        assert sorted(self.index.ids().tolist()) == sorted(self.oracle)


IndexMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
test_index_state_machine = IndexMachine.TestCase


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3000, 64)).astype(np.float32), rng.permutation(10**6)[:3000]


@pytest.mark.parametrize("n_queries", [1, 5, 70, 200])  # the database-split and the query-split paths
def test_matches_faiss_flat_ip(corpus, n_queries):
    faiss = pytest.importorskip("faiss")
    vectors, ids = corpus
    index = DocumentIndex(64, n_threads=2)
    index.upsert(ids, vectors)
    reference = faiss.IndexIDMap2(faiss.IndexFlatIP(64))
    reference.add_with_ids(vectors, ids)
    queries = np.random.default_rng(1).standard_normal((n_queries, 64)).astype(np.float32)
    got_scores, got_ids = index.search(queries, 50)
    want_scores, want_ids = reference.search(queries, 50)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-4)
    assert np.mean(got_ids == want_ids) > 0.999  # near-ties may swap under different summation orders


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_storage_scores_in_fp32(corpus, dtype):
    vectors, ids = corpus
    index = DocumentIndex(64, dtype)
    index.upsert(ids, vectors)
    stored = index.get(ids)
    rounding = 2**-10 if dtype == "float16" else 2**-7
    np.testing.assert_allclose(stored, vectors, rtol=rounding, atol=1e-4)
    queries = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    scores, found = index.search(queries, 100)
    # Exactly the fp32 inner products with the stored (rounded) vectors; a bf16 index rounds the queries to
    # bf16 too, where its path multiplies in bf16 (vdpbf16ps: exact products, fp32 sums).
    from atlas_fast import _ext

    if _ext.simd_paths()[dtype] == "avx512bf16":
        import torch

        queries = torch.from_numpy(queries).bfloat16().float().numpy()
    stored_found = index.get(found.reshape(-1)).reshape(4, 100, 64)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, stored_found), rtol=1e-5, atol=1e-4)
    fp32 = DocumentIndex(64)
    fp32.upsert(ids, vectors)
    recall = np.mean([np.isin(found[q], fp32.search(queries, 100)[1][q]).mean() for q in range(4)])
    assert recall >= 0.95


def test_input_conventions(corpus):
    vectors, ids = corpus
    index = DocumentIndex(64)
    index.upsert(ids[:10], vectors[:10].astype(np.float64))  # float64 is converted
    index.upsert(ids[10:20], np.asfortranarray(vectors[10:20]))  # non-contiguous is converted
    index.upsert([7, 7], np.stack([vectors[0], vectors[1]]))  # duplicates: the last wins
    np.testing.assert_array_equal(index.get([7])[0], vectors[1])
    assert len(index) == 21
    empty = DocumentIndex(4)
    scores, found = empty.search(np.ones((2, 4)), 3)
    assert (found == -1).all() and np.isneginf(scores).all()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda i: i.upsert([1], np.ones((1, 5))), ValueError, r"vectors must have shape \(n, 4\)"),
        (lambda i: i.upsert([1, 2], np.ones((1, 4))), ValueError, "vectors has 1 rows but ids has 2"),
        (lambda i: i.upsert([1], np.full((1, 4), np.nan)), ValueError, "NaN"),
        (lambda i: i.upsert([-1], np.ones((1, 4))), ValueError, "-1"),
        (lambda i: i.upsert([[1]], np.ones((1, 4))), ValueError, "ids must be a 1-D integer array"),
        (lambda i: i.upsert([1], np.ones((1, 4)), step=-1), ValueError, "step must be"),
        (lambda i: i.remove([99]), KeyError, "99"),
        (lambda i: i.remove([0, 0]), ValueError, "distinct"),
        (lambda i: i.search(np.ones((1, 4)), 0), ValueError, "k must be a positive integer"),
        (lambda i: i.search(np.ones((1, 3)), 1), ValueError, r"queries must have shape"),
        (lambda i: i.get([0, 99]), KeyError, "99"),
        (lambda i: i.stale_ids(1, "newest"), ValueError, "policy must be one of"),
        (lambda i: DocumentIndex(0), ValueError, "dim must be a positive integer"),
        (lambda i: DocumentIndex(4, "int4"), ValueError, "dtype must be one of"),
    ],
)
def test_bad_input_leaves_the_index_unchanged(call, error, message):
    index = DocumentIndex(4)
    index.upsert([0, 1, 2], np.arange(12, dtype=np.float32).reshape(3, 4))
    before = index.get([0, 1, 2])
    with pytest.raises(error, match=message):
        call(index)
    assert len(index) == 3
    np.testing.assert_array_equal(index.get([0, 1, 2]), before)


def test_staleness_policies_and_drift():
    index = DocumentIndex(2)
    index.upsert([10, 11, 12, 13], np.ones((4, 2)), step=0)
    index.upsert([12], np.ones((1, 2)), step=5)
    assert index.step_of([10, 12]).tolist() == [0, 5]
    assert index.stale_ids(3, "oldest").tolist() == [10, 11, 13]  # step 0 first, ties by id
    index.record_retrieved(np.array([[12, 13], [12, -1]]))  # -1 padding ignored
    assert index.stale_ids(2, "hot").tolist() == [12, 13]
    index.upsert([12], np.ones((1, 2)), step=6)  # re-embedding resets the count
    assert index.stale_ids(1, "hot").tolist() == [13]
    assert index.stale_ids(10).size == 4
    index.drift(reset=True)
    index.upsert([10, 11], np.array([[1.0, 1.0], [1.0, -1.0]]), step=7)  # cosine 1 and 0
    mean, count = index.drift()
    assert count == 2 and mean == pytest.approx(0.5)
    assert index.drift() == (0.0, 0)


def test_remove_moves_the_last_row_correctly():
    index = DocumentIndex(3)
    vectors = np.arange(30, dtype=np.float32).reshape(10, 3)
    index.upsert(np.arange(10) * 7, vectors)
    index.remove([0, 21])
    np.testing.assert_array_equal(index.get([63]), vectors[9:10])
    assert sorted(index.ids().tolist()) == [7, 14, 28, 35, 42, 49, 56, 63]


def test_memory_stays_near_the_raw_vectors():
    n, dim = 100_000, 32
    index = DocumentIndex(dim)
    index.upsert(np.arange(n), np.zeros((n, dim), dtype=np.float32))
    assert index.memory_bytes() <= 1.05 * n * dim * 4 + 32 * n


def test_search_during_upserts_sees_whole_rows():
    """Rows flip between v and 2v while searches run: every score is s or 2s, never a mix."""
    n, dim = 2000, 256
    rng = np.random.default_rng(3)
    base = rng.uniform(0.5, 1.0, (n, dim)).astype(np.float32)
    index = DocumentIndex(dim, n_threads=1)
    index.upsert(np.arange(n), base)
    query = np.ones((1, dim), dtype=np.float32)
    single = base.sum(1)
    stop = time.monotonic() + 2.0
    failures = []

    def writer():
        factor = 2.0
        while time.monotonic() < stop:
            index.upsert(np.arange(n), base * factor)
            factor = 3.0 - factor

    thread = threading.Thread(target=writer)
    thread.start()
    searches = 0
    while time.monotonic() < stop:
        scores, found = index.search(query, n)
        ratio = scores[0] / single[found[0]]
        if not (np.isclose(ratio, 1, rtol=1e-4) | np.isclose(ratio, 2, rtol=1e-4)).all():
            failures.append(ratio)
        searches += 1
    thread.join()
    assert searches > 3 and not failures


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path, dtype, mmap):
    rng = np.random.default_rng(4)
    index = DocumentIndex(16, dtype)
    index.upsert(rng.permutation(1000)[:300], rng.standard_normal((300, 16)), step=3)
    index.record_retrieved(index.ids()[:5])
    path = tmp_path / "corpus.afi"
    index.save(path)
    loaded = DocumentIndex.load(path, mmap=mmap)
    assert (loaded.dim, loaded.dtype, len(loaded)) == (16, dtype, 300)
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    np.testing.assert_array_equal(loaded.get(index.ids()), index.get(index.ids()))
    np.testing.assert_array_equal(loaded.step_of(index.ids()), index.step_of(index.ids()))
    assert loaded.stale_ids(5, "hot").tolist() == index.stale_ids(5, "hot").tolist()
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.afi"]  # no temporary left behind


def _saved(tmp_path):
    index = DocumentIndex(8)
    index.upsert(np.arange(50), np.random.default_rng(5).standard_normal((50, 8)))
    path = tmp_path / "corpus.afi"
    index.save(path)
    return index, path


def test_truncated_file_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(IndexFileError, match="truncated"):
        DocumentIndex.load(path)


def test_flipped_byte_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="checksum"):
        DocumentIndex.load(path)


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "not-an-index"
    path.write_bytes(b"\x80\x04K\x01." * 10)  # a pickle, which is never read
    with pytest.raises(IndexFileError, match="not an atlas_fast index"):
        DocumentIndex.load(path)


def test_crash_before_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    index, path = _saved(tmp_path)
    before = path.read_bytes()
    index.upsert([1000], np.ones((1, 8)))

    def crash(*args):
        raise OSError("simulated crash between write and rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        index.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert len(DocumentIndex.load(path)) == 50
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.afi"]


def test_faiss_round_trip(corpus):
    pytest.importorskip("faiss")
    vectors, ids = corpus
    index = DocumentIndex(64)
    index.upsert(ids[:500], vectors[:500])
    exported = to_faiss(index)
    queries = vectors[:3] + 0.01
    np.testing.assert_array_equal(exported.search(queries, 10)[1], index.search(queries, 10)[1])
    back = from_faiss(exported, dtype="float16")
    assert len(back) == 500 and back.dtype == "float16"
    np.testing.assert_allclose(back.get(ids[:500]), vectors[:500], rtol=2**-10, atol=1e-4)


SIMD_CHECK = """
import numpy as np
from atlas_fast import _ext
from atlas_fast.index import DocumentIndex
rng = np.random.default_rng(0)
# Odd d (every tail path), N not a multiple of a tile, small integers: exact scores in every precision, many ties.
vectors = rng.integers(-3, 4, (700, 37)).astype(np.float32)
queries = rng.integers(-3, 4, (70, 37)).astype(np.float32)
for dtype in ("float32", "float16", "bfloat16"):
    index = DocumentIndex(37, dtype, n_threads=2)
    index.upsert(np.arange(700), vectors)
    for k in (25, 800):  # k > N pads with -1
        scores, ids = index.search(queries, k)
        np.save(f"{OUT}/{dtype}-{k}-scores.npy", scores)
        np.save(f"{OUT}/{dtype}-{k}-ids.npy", ids)
print(_ext.build_info()["simd"], _ext.simd_paths()["bfloat16"])
"""

SIMD_LEVELS = ["avx512bf16", "avx512vnni", "avx512", "avx2", "portable"]  # widest first


def _run_simd_check(directory, level, script=SIMD_CHECK):
    """Run ``script`` (it writes under OUT = directory) in a process whose ATLAS_FAST_SIMD is ``level``."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ATLAS_FAST_SIMD"}
    if level:
        env["ATLAS_FAST_SIMD"] = level
    directory.mkdir()
    code = f"OUT = {str(directory)!r}\n" + script
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def _numpy_top_k(vectors, queries, k):
    """Exact fp32 top-k with DocumentIndex's order: higher score first, ties by the smaller id; -1 pads."""
    scores = queries @ vectors.T
    order = np.lexsort((np.broadcast_to(np.arange(len(vectors)), scores.shape), -scores), axis=1)[:, :k]
    ids = np.full((len(queries), k), -1)
    ids[:, : order.shape[1]] = order
    return ids


@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_every_simd_path_equals_numpy(tmp_path, level):
    """Each path the CPU supports (forced with ATLAS_FAST_SIMD) returns exactly numpy's fp32 top-k, ties included."""
    from atlas_fast import _ext

    widest = _ext.build_info()["simd"] if not os.environ.get("ATLAS_FAST_SIMD") else None
    if widest is not None and SIMD_LEVELS.index(level) < SIMD_LEVELS.index(widest):
        pytest.skip(f"this CPU's widest path is {widest}")
    reported = _run_simd_check(tmp_path / level, level).split()
    assert reported[0] == level
    # bf16 rows: vdpbf16ps when asked; the avx512vnni level serves int8 rows only (tests/test_int8_index.py).
    assert reported[1] == {"avx512bf16": "avx512bf16", "avx512vnni": "avx512"}.get(level, level)
    rng = np.random.default_rng(0)
    vectors = rng.integers(-3, 4, (700, 37)).astype(np.float32)
    queries = rng.integers(-3, 4, (70, 37)).astype(np.float32)
    for k in (25, 800):
        want = _numpy_top_k(vectors, queries, k)
        for dtype in ("float32", "float16", "bfloat16"):
            np.testing.assert_array_equal(np.load(tmp_path / level / f"{dtype}-{k}-ids.npy"), want, err_msg=dtype)


INT8_CHECK = """
import numpy as np
from atlas_fast import _ext
from atlas_fast.index import DocumentIndex
rng = np.random.default_rng(0)
# d = 37 (below one AVX2 step of 16 and one VNNI step of 64), 133 (steps and tails), 768 (the usual size).
# 85 queries: two threads split the rows, each scoring groups of 64 and 21 (avx512vnni: 16-query vectors, one
# partly padding); 150: the threads split the queries, 80 and 70, so groups of 64, 16 and 6 (the register-block kernel).
for dim in (37, 133, 768):
    index = DocumentIndex(dim, "int8", n_threads=2)
    index.upsert(np.arange(700), rng.standard_normal((700, dim)).astype(np.float32))
    np.save(f"{OUT}/{dim}-rows.npy", index._core.export_rows(0, 700)[3])
    for n_queries in INT8_QUERIES:
        queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
        np.save(f"{OUT}/{dim}-{n_queries}-queries.npy", queries)
        for k in (25, 800):
            scores, ids = index.search(queries, k)
            np.save(f"{OUT}/{dim}-{n_queries}-{k}-scores.npy", scores)
            np.save(f"{OUT}/{dim}-{n_queries}-{k}-ids.npy", ids)
print(_ext.simd_paths()["int8"])
"""
INT8_QUERIES = (85, 150)


def int8_reference_scores(queries: np.ndarray, stored: np.ndarray, dim: int) -> np.ndarray:
    """What an int8 index scores, in numpy: queries quantised as csrc/storage.h's quantise_int8 does, exact
    integer inner products with the stored bytes (offset by 128), then (dot · query scale) · row scale in fp32."""
    largest = np.abs(queries).max(axis=1)
    scales = (largest / np.float32(127)).astype(np.float32)
    inverse = np.where(scales > 0, np.float32(1) / np.maximum(scales, np.float32(1e-38)), np.float32(0))
    quantised = np.clip(np.rint(queries * inverse[:, None].astype(np.float32)), -127, 127).astype(np.int64)
    values = stored[:, :dim].astype(np.int64) - 128
    row_scales = stored[:, -4:].copy().view(np.float32)[:, 0]
    dots = (quantised @ values.T).astype(np.float32)
    return (dots * scales[:, None]) * row_scales[None, :]


@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_every_int8_path_equals_the_numpy_reference(tmp_path, level):
    """int8 rows: every path (vpdpbusd, AVX2 vpmaddwd, portable) gives numpy's quantised scores exactly."""
    from atlas_fast import _ext

    widest = _ext.build_info()["simd"] if not os.environ.get("ATLAS_FAST_SIMD") else None
    if widest is not None and SIMD_LEVELS.index(level) < SIMD_LEVELS.index(widest):
        pytest.skip(f"this CPU's widest path is {widest}")
    reported = _run_simd_check(tmp_path / level, level, f"INT8_QUERIES = {INT8_QUERIES}\n" + INT8_CHECK).split()
    assert reported[0] == {"avx512bf16": "avx512vnni", "avx512": "avx2"}.get(level, level)
    out = tmp_path / level
    for dim, n_queries in itertools.product((37, 133, 768), INT8_QUERIES):
        queries = np.load(out / f"{dim}-{n_queries}-queries.npy")
        scores = int8_reference_scores(queries, np.load(out / f"{dim}-rows.npy"), dim)
        order = np.lexsort((np.broadcast_to(np.arange(700), scores.shape), -scores), axis=1)
        for k in (25, 800):
            want_ids = np.full((n_queries, k), -1)
            want_ids[:, : min(k, 700)] = order[:, :k]
            got_ids = np.load(out / f"{dim}-{n_queries}-{k}-ids.npy")
            np.testing.assert_array_equal(got_ids, want_ids, err_msg=f"d={dim}, {n_queries} queries")
            got = np.load(out / f"{dim}-{n_queries}-{k}-scores.npy")[:, : min(k, 700)]
            np.testing.assert_array_equal(got, np.take_along_axis(scores, want_ids[:, : min(k, 700)], 1))


@pytest.mark.parametrize(
    ("value", "message"),
    [("bogus", "expected one of amx, avx512bf16"), ("amx", "AMX"), ("avx512bf16", "cannot run it")],
)
def test_an_unavailable_simd_path_raises(value, message):
    import subprocess
    import sys

    from atlas_fast import _ext

    if value == "avx512bf16" and _ext.build_info()["simd"] == "avx512bf16":
        pytest.skip("this CPU runs the avx512bf16 path")
    code = "from atlas_fast.index import DocumentIndex\nDocumentIndex(8)"
    env = {**os.environ, "ATLAS_FAST_SIMD": value}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "SimdUnavailable" in result.stderr and f"ATLAS_FAST_SIMD={value}" in result.stderr
    assert message in result.stderr


def test_bf16_search_is_within_rounding_of_fp16_and_finds_the_fp32_neighbours():
    n, d, k = 20_000, 768, 100
    vectors, queries = clustered_embeddings(n, d, 3)
    exact = _numpy_top_k(vectors, queries, k)
    found = {}
    for dtype in ("float16", "bfloat16"):
        index = DocumentIndex(d, dtype)
        index.upsert(np.arange(n), vectors)
        scores, found[dtype] = index.search(queries, k)
        stored = index.get(np.arange(n))
        # Scores are the stored rows' inner products with the queries, to the rounding of bf16 queries.
        direct = np.take_along_axis(queries @ stored.T, found[dtype], axis=1)
        np.testing.assert_allclose(scores, direct, rtol=2**-7, atol=2**-7 * np.abs(direct).max())
    recall = {dtype: np.mean([np.isin(found[dtype][q], exact[q]).mean() for q in range(32)]) for dtype in found}
    assert recall["bfloat16"] >= 0.995 and recall["float16"] >= 0.995, recall


def test_storage_rounding_matches_numpy_and_torch():
    """fp16 storage rounds as numpy's float16, bf16 as torch's bfloat16 (round to nearest even); values that
    would round to inf (fp16: |v| ≥ 65520) are refused (tests/test_reliability_index.py)."""
    import torch

    rng = np.random.default_rng(6)
    largest_to_65504 = np.nextafter(np.float32(65520), np.float32(0))
    values = np.concatenate(
        [
            rng.standard_normal(4000) * 10.0 ** rng.integers(-9, 5, 4000),  # normals, fp16 subnormals, large
            [0.0, -0.0, 65504.0, largest_to_65504, 1e-8, 5.96e-8, 2.98e-8, 1 + 2**-11, 1 + 3 * 2**-11],
        ]
    ).astype(np.float32)
    for dtype in ("float16", "bfloat16"):
        kept = values[np.abs(values) < 65520] if dtype == "float16" else values
        vectors = kept[: len(kept) // 7 * 7].reshape(-1, 7)
        ids = np.arange(vectors.shape[0])
        if dtype == "float16":
            expected = vectors.astype(np.float16).astype(np.float32)
        else:
            expected = torch.from_numpy(vectors).bfloat16().float().numpy()
        index = DocumentIndex(7, dtype)
        index.upsert(ids, vectors)
        np.testing.assert_array_equal(index.get(ids), expected)


@pytest.mark.parametrize(
    ("factory", "parameters", "least_recall"),  # serving parameters as docs/faiss.md sets them
    [
        ("HNSW32", "efSearch=128", 0.75),
        ("IVF16,PQ16", "nprobe=8", 0.7),
        ("IVF16,PQ8,RFlat", "nprobe=8,k_factor_rf=4", 0.85),  # PQ candidates rescored exactly
        ("IVF16,SQ8", "nprobe=8", 0.9),
    ],
)
def test_faiss_export_by_factory_string_trains_serves_and_comes_back(factory, parameters, least_recall):
    faiss = pytest.importorskip("faiss")
    vectors = clustered_embeddings(3000, 32, centres=20, spread=0.3, unit=True)[0]
    ids = np.arange(3000, dtype=np.int64) * 7 + 5  # ids that are not row numbers
    index = DocumentIndex(32, "bfloat16")
    index.upsert(ids, vectors)
    exported = to_faiss(index, factory, train_rows=1000)
    assert exported.ntotal == 3000 and exported.metric_type == faiss.METRIC_INNER_PRODUCT
    queries = clustered_embeddings(50, 32, 1, centres=20, spread=0.3, unit=True)[0]
    faiss.ParameterSpace().set_index_parameters(exported, parameters)
    approximate = exported.search(queries, 10)[1]
    exact = index.search(queries, 10)[1]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact, strict=True)])
    assert recall >= least_recall, recall  # recall@10 against exact search of the same rows
    back = from_faiss(exported)
    np.testing.assert_array_equal(back.ids(), np.sort(ids))
    decoded = back.get(ids)  # a compressed index gives back its decoded vectors: close, not equal
    assert np.mean(np.sum(decoded * vectors, axis=1)) > 0.9


def test_faiss_export_refuses_what_it_cannot_serve():
    faiss = pytest.importorskip("faiss")
    index = DocumentIndex(8)
    index.upsert(np.arange(4), np.eye(4, 8, dtype=np.float32))
    with pytest.raises(ValueError, match="'Bogus12' is not a faiss index_factory string"):
        to_faiss(index, "Bogus12")
    with pytest.raises(ValueError, match="must rank by inner product"):
        to_faiss(index, faiss.IndexFlatL2(8))
    with pytest.raises(ValueError, match="train_rows must be at least 1"):
        to_faiss(index, "IVF2,Flat", train_rows=0)


def test_a_torch_index_exports_to_faiss():
    pytest.importorskip("faiss")
    from atlas_fast.index import TorchDocumentIndex

    vectors = clustered_embeddings(200, 16, centres=20, spread=0.3, unit=True)[0]
    index = TorchDocumentIndex(16, "float32", device="cpu")
    index.upsert(np.arange(200), vectors)
    exported = to_faiss(index, "HNSW16")
    np.testing.assert_array_equal(exported.search(vectors[:5], 1)[1][:, 0], np.arange(5))
