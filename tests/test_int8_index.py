"""int8 rows in the C++ DocumentIndex: what they store, how near exact search they stay, and the index semantics
every dtype keeps (upsert, drift, transform, persistence, sharding). Every SIMD path's exact scores are checked in
tests/test_document_index.py (test_every_int8_path_equals_the_numpy_reference)."""

import numpy as np
import pytest

from atlas_fast import _ext
from atlas_fast.index import DocumentIndex, TorchDocumentIndex, load_index, open_index
from atlas_fast.testing import clustered_embeddings
from atlas_fast.train.config import ConfigError, TrainConfig


def test_rows_are_quantised_per_row_and_dequantised_by_get():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((50, 40)).astype(np.float32) * rng.uniform(0.01, 100, (50, 1)).astype(np.float32)
    rows[7] = 0.0  # a zero row: scale 0, stored and read back as zeros
    index = DocumentIndex(40, "int8")
    index.upsert(np.arange(50), rows)
    scales = np.abs(rows).max(axis=1, keepdims=True) / 127
    stored = index.get(np.arange(50))
    assert np.all(np.abs(stored - rows) <= scales / 2 * (1 + 1e-5) + 1e-30)  # within half a step of its own scale
    assert np.array_equal(stored[7], np.zeros(40)) and np.array_equal(np.abs(stored).max(axis=1), np.abs(rows).max(1))
    assert _ext.native().row_bytes("int8", 40) == 44  # 40 values + the fp32 scale
    assert _ext.native().row_bytes("int8", 768) <= 0.52 * _ext.native().row_bytes("bfloat16", 768)


def test_recall_at_100_against_exact_float32_is_at_least_0_99():
    rows, queries = clustered_embeddings(20_000, 768, 3)
    exact = DocumentIndex(768)
    exact.upsert(np.arange(len(rows)), rows)
    int8 = DocumentIndex(768, "int8")
    int8.upsert(np.arange(len(rows)), rows)
    _, want = exact.search(queries, 100)
    _, got = int8.search(queries, 100)
    recall = np.mean([np.isin(got[q], want[q]).mean() for q in range(len(queries))])
    assert recall >= 0.99, recall


def test_upsert_overwrites_in_place_and_records_drift():
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((20, 16)).astype(np.float32)
    index = DocumentIndex(16, "int8")
    index.upsert(np.arange(20), rows, step=0)
    index.upsert([3, 4], -rows[3:5], step=2)
    assert len(index) == 20 and index.step_of([3, 4, 5]).tolist() == [2, 2, 0]
    np.testing.assert_allclose(index.get([3, 4]), -rows[3:5], atol=np.abs(rows[3:5]).max() / 127)
    mean_cosine, count = index.drift(reset=True)
    assert count == 2 and mean_cosine == pytest.approx(-1.0, abs=1e-3)
    index.remove([3])
    assert 3 not in index and len(index) == 19


def test_transform_re_quantises_the_rows_it_maps_and_keeps_their_steps():
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((30, 12)).astype(np.float32)
    index = DocumentIndex(12, "int8")
    index.upsert(np.arange(10), rows[:10], step=0)
    index.upsert(np.arange(10, 30), rows[10:], step=5)
    rotation = np.linalg.qr(rng.standard_normal((12, 12)))[0].astype(np.float32)
    before = index.get(np.arange(30))
    assert index.transform(rotation, older_than=5) == 10  # the rows of steps before 5 only
    after = index.get(np.arange(30))
    step = np.abs(before[:10] @ rotation).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(after[:10] - before[:10] @ rotation) <= step / 2 * (1 + 1e-4))
    np.testing.assert_array_equal(after[10:], before[10:])
    assert index.step_of(np.arange(30)).tolist() == [0] * 10 + [5] * 20
    assert index.transform(np.eye(12) * 3, older_than=1, normalize=True) == 10
    np.testing.assert_allclose(np.linalg.norm(index.get(np.arange(10)), axis=1), 1.0, atol=2e-2)


@pytest.mark.parametrize("normalize", [False, True])
def test_a_transform_beyond_float32_is_refused_and_changes_nothing(normalize):
    index = DocumentIndex(8, "int8")
    index.upsert(np.arange(6), np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32) * 3)
    before = index.get(np.arange(6))
    with pytest.raises(ValueError, match=r"maps some rows beyond float32's range.*index is unchanged"):
        index.transform(np.eye(8) * 3e38, older_than=1, normalize=normalize)
    np.testing.assert_array_equal(index.get(np.arange(6)), before)


def test_save_and_load_keep_rows_scores_and_counts(tmp_path):
    rows, queries = clustered_embeddings(3000, 96, 4)
    index = DocumentIndex(96, "int8")
    index.upsert(np.arange(3000), rows, step=2)
    index.record_retrieved(np.arange(5))
    index.save(tmp_path / "int8.afi")
    loaded = load_index(tmp_path / "int8.afi")
    assert loaded.dtype == "int8" and len(loaded) == 3000
    for a, b in zip(index.search(queries, 50), loaded.search(queries, 50), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.stale_ids(5, "hot").tolist() == [0, 1, 2, 3, 4]
    assert (tmp_path / "int8.afi").stat().st_size < 3000 * (16 + 96 + 4) + 4096


def test_int8_is_the_host_index_s_own():
    with pytest.raises(ValueError, match=r"got 'int8' \(int8 rows are the host DocumentIndex's\)"):
        TorchDocumentIndex(8, "int8", "cpu")
    with pytest.raises(ConfigError, match='index_dtype = "int8" needs index_device = "host"'):
        TrainConfig(index_dtype="int8", index_device="cpu")
    assert open_index(8, "int8").dtype == "int8"
