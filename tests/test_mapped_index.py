"""DocumentIndex.map: an index file served from a memory map, its rows neither read nor copied at open.

The file is never written: a changed row's block is copied into the index's own memory first
(copy on write). Opening does not hash the file; `verify` does, and names the file it refuses.
"""

import hashlib
import struct

import numpy as np
import pytest

from atlas_fast import _ext
from atlas_fast.index import DocumentIndex, IndexFileError, load_index
from atlas_fast.index.sharded import read_shards

N, DIM = 10_000, 48  # 10,000 rows: two whole blocks of 4,096 and a last one of 1,808
BLOCK = _ext.native().DocumentIndex.block_rows


def _saved(tmp_path, dtype="float32"):
    rng = np.random.default_rng(0)
    index = DocumentIndex(DIM, dtype)
    index.upsert(rng.permutation(50_000)[:N], rng.standard_normal((N, DIM)).astype(np.float32), step=1)
    index.record_retrieved(index.ids()[:7])
    path = tmp_path / f"{dtype}.afi"
    index.save(path)
    return index, path


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
def test_a_mapped_index_answers_as_the_loaded_one_without_holding_its_rows(tmp_path, dtype):
    loaded, path = _saved(tmp_path, dtype)
    mapped = DocumentIndex.map(path)
    queries = np.random.default_rng(1).standard_normal((9, DIM)).astype(np.float32)
    for a, b in zip(loaded.search(queries, 30), mapped.search(queries, 30), strict=True):
        np.testing.assert_array_equal(a, b)
    ids = loaded.ids()
    np.testing.assert_array_equal(mapped.get(ids), loaded.get(ids))
    np.testing.assert_array_equal(mapped.step_of(ids), loaded.step_of(ids))
    assert mapped.stale_ids(7, "hot").tolist() == loaded.stale_ids(7, "hot").tolist()
    row_bytes = _ext.native().row_bytes(dtype, DIM)
    assert mapped.mapped_bytes() == N * row_bytes
    assert mapped.memory_bytes() < loaded.memory_bytes() - N * row_bytes // 2  # metadata and id map only
    assert load_index(path, mapped=True).mapped_bytes() == N * row_bytes


def test_writes_copy_only_the_blocks_they_touch_and_never_the_file(tmp_path):
    loaded, path = _saved(tmp_path)
    before = path.read_bytes()
    mapped = DocumentIndex.map(path)
    row_bytes = _ext.native().row_bytes("float32", DIM)
    ids = loaded.ids()
    new = np.ones((1, DIM), np.float32)
    for index in (loaded, mapped):
        index.upsert(ids[5:6], new, step=4)  # a row of block 0
    assert mapped.mapped_bytes() == (N - BLOCK) * row_bytes
    for index in (loaded, mapped):
        index.upsert([99_999], new, step=4)  # a new row: appended to the last block, mapped and partial
    assert mapped.mapped_bytes() == BLOCK * row_bytes  # block 1 is the only one still mapped
    for index in (loaded, mapped):
        index.remove(ids[BLOCK + 3 : BLOCK + 4])  # the last row moves into block 1's hole
        index.transform(np.eye(DIM, dtype=np.float32) * 0.5, older_than=2)
    assert mapped.mapped_bytes() == 0
    queries = np.random.default_rng(2).standard_normal((5, DIM)).astype(np.float32)
    for a, b in zip(loaded.search(queries, 40), mapped.search(queries, 40), strict=True):
        np.testing.assert_array_equal(a, b)
    assert path.read_bytes() == before


def test_saving_over_the_mapped_file_keeps_serving_the_open_index(tmp_path):
    _, path = _saved(tmp_path, "bfloat16")
    mapped = DocumentIndex.map(path)
    mapped.upsert([123_456], np.ones((1, DIM), np.float32), step=9)
    mapped.save(path)  # a new file renamed over the old one: the mapping keeps the old inode
    queries = np.random.default_rng(3).standard_normal((4, DIM)).astype(np.float32)
    expected = mapped.search(queries, 25)
    again = DocumentIndex.map(path)
    assert len(again) == N + 1 and again.step_of([123_456]).tolist() == [9]
    for a, b in zip(expected, again.search(queries, 25), strict=True):
        np.testing.assert_array_equal(a, b)
    del again, mapped  # the mapping lives as long as the index that serves from it


def _flip_vector_byte(path):
    data = bytearray(path.read_bytes())
    data[-32 - 100] ^= 0x40  # inside the last row's vector
    path.write_bytes(bytes(data))


def test_a_corrupted_row_opens_mapped_but_verify_and_load_refuse_it_naming_the_file(tmp_path):
    _, path = _saved(tmp_path)
    _flip_vector_byte(path)
    mapped = DocumentIndex.map(path)  # no hashing at open: that is what makes it fast
    with pytest.raises(IndexFileError, match=rf"{path}: checksum mismatch"):
        mapped.verify()
    with pytest.raises(IndexFileError, match=rf"{path}: checksum mismatch"):
        DocumentIndex.load(path)


def test_verify_checks_the_rows_of_a_file_whose_checksum_was_recomputed(tmp_path):
    _, path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-32 - 4 : -32] = np.float32(np.nan).tobytes()  # the last row's last value
    data[-32:] = hashlib.sha256(bytes(data[:-32])).digest()
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="NaN or infinite"):
        DocumentIndex.map(path).verify()


def test_ids_no_index_holds_are_refused_at_open(tmp_path):
    _, path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    start = 16 + struct.unpack_from("<I", data, 12)[0]  # after magic, version, header length and the header
    data[start : start + 8] = np.int64(-1).tobytes()
    data[-32:] = hashlib.sha256(bytes(data[:-32])).digest()
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="holds id -1"):
        DocumentIndex.map(path)


def test_an_id_twice_is_refused_at_open(tmp_path):
    _, path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    start = 16 + struct.unpack_from("<I", data, 12)[0]
    data[start + 8 : start + 16] = data[start : start + 8]  # the second row takes the first row's id
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="duplicate ids"):
        DocumentIndex.map(path)


def test_mapped_is_for_host_index_files_only(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(ValueError, match="only a host index file maps"):
        load_index(path, device="cpu", mapped=True)


def test_a_rank_reads_its_share_of_one_process_index_file_and_refuses_a_corrupted_one(tmp_path):
    """A one-process checkpoint resumed on more ranks: each maps the file and copies only the rows it keeps."""
    whole, path = _saved(tmp_path, "bfloat16")
    mine = read_shards(path, lambda ids: ids % 3 == 1)
    kept = whole.ids()[whole.ids() % 3 == 1]
    assert sorted(mine.ids().tolist()) == sorted(kept.tolist())
    np.testing.assert_array_equal(mine.get(kept), whole.get(kept))
    np.testing.assert_array_equal(mine.step_of(kept), whole.step_of(kept))
    assert mine.mapped_bytes() == 0  # its own copy: the file may be replaced while the run goes on
    _flip_vector_byte(path)
    with pytest.raises(IndexFileError, match=str(path.name)):
        read_shards(path, lambda ids: ids % 3 == 1)
