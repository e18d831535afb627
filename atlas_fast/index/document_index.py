"""DocumentIndex: exact inner-product search over embeddings that are re-embedded while training runs.

The C++ core (csrc/document_index.cpp) stores rows in fp32, fp16 or bf16 and scores
in fp32; this wrapper validates every argument before anything changes (a refused
call leaves the index as it was) and implements persistence.

Input conventions (documented results rather than errors):
- vectors and queries may be numpy arrays or CPU torch tensors, of any float dtype;
  they are converted to contiguous float32 (float64 is rounded).
- duplicate ids within one `upsert`: the last occurrence wins.
- `search` on an empty index, or with k above its size, pads with id -1 and score -inf.
- `record_retrieved` ignores ids it does not hold (such as the -1 padding of search results).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import threading
from pathlib import Path

import numpy as np

from atlas_fast import _ext
from atlas_fast.index.arguments import (
    CHUNK_ROWS,
    DTYPES,
    as_ids,
    as_integer_array,
    as_k,
    as_matrix,
    as_step,
    stale_arguments,
    transform_arguments,
)

__all__ = ["DocumentIndex", "IndexFileError"]

INDEX_MAGIC = b"ATLASIDX"  # an index file's first bytes
_FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sII")  # magic, format version, header length
_MAX_DIM = 1 << 20  # far beyond any embedding; a larger header value is a crafted or corrupted file


class IndexFileError(ValueError):
    """An index file is truncated, corrupted, or not an atlas_fast index."""


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.NAME.tmp-PID`` files that saves of ``path`` by processes no longer alive left behind (a kill)."""
    for temporary in path.parent.glob(f".{path.name}.tmp-*"):
        pid = temporary.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            temporary.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, another user's


def _check_ids_and_steps(path: Path, ids: np.ndarray, steps: np.ndarray) -> None:
    if (ids == -1).any():
        raise IndexFileError(f"{path}: holds id -1, which marks padding")
    if (steps < 0).any():
        raise IndexFileError(f"{path}: holds negative steps")


def _check_rows(path: Path, ids: np.ndarray, steps: np.ndarray, vectors: np.ndarray, dtype: str) -> None:
    """What a file with a valid checksum may still hold but no index does: id -1, negative steps, NaN or inf
    (int8: in a row's scale, or a negative scale)."""
    _check_ids_and_steps(path, ids, steps)
    if dtype == "int8":  # each row's fp32 scale follows its values and padding (csrc/storage.h)
        scales = vectors[:, -4:].copy().view(np.float32)
        if not np.isfinite(scales).all() or (scales < 0).any():
            raise IndexFileError(f"{path}: holds an int8 row whose scale is negative, NaN or infinite")
        return
    if dtype == "float32":
        finite = np.isfinite(vectors).all()
    elif dtype == "float16":
        finite = np.isfinite(vectors.view(np.float16)).all()
    else:  # bfloat16: an all-ones exponent is inf or NaN
        finite = not ((vectors & 0x7F80) == 0x7F80).any()
    if not finite:
        raise IndexFileError(f"{path}: holds NaN or infinite vector values")


class DocumentIndex:
    """Exact inner-product index over document embeddings with in-place updates.

    Args:
        dim: embedding size d.
        dtype: storage precision, "float32", "float16", "bfloat16" or "int8"; scores are always
            returned in float32. int8 quantises each row symmetrically with its own fp32 scale
            (|v| / 127 steps; `get` returns the dequantised row) and each query per search likewise,
            and accumulates in int32: 0.5 the bytes of bfloat16, and about twice its speed on CPUs
            with AVX512-VNNI (BENCHMARKS.md, section cpu-index).
        n_threads: threads for search; 0 uses torch's intra-op thread count.
    """

    def __init__(self, dim: int, dtype: str = "float32", n_threads: int = 0):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim must be a positive integer; got {dim!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        self._core = _ext.native().DocumentIndex(int(dim), dtype)
        self.n_threads = n_threads
        # Held by every call that changes rows or counts, and by `save` for its whole write: the C++ core
        # locks each call, but a file is many calls, and must be one consistent snapshot. Searches, which
        # only read, do not take it, so they still run during an upsert (and during a save).
        self._writing = threading.Lock()
        # Strings saved with the index (in its header), e.g. the fingerprint of the passages it embeds.
        self.metadata: dict[str, str] = {}

    @property
    def dim(self) -> int:
        return self._core.dim

    @property
    def dtype(self) -> str:
        return self._core.dtype

    def __len__(self) -> int:
        return len(self._core)

    def __repr__(self) -> str:
        return f"DocumentIndex(dim={self.dim}, dtype={self.dtype!r}, documents={len(self)})"

    def _threads(self) -> int:
        if self.n_threads:
            return self.n_threads
        import torch  # the default follows torch so that the two never oversubscribe the cores

        return torch.get_num_threads()

    def contains(self, ids) -> np.ndarray:
        """(n,) bool: whether each id is in the index."""
        return self._core.rows_of(as_ids("ids", ids)) >= 0

    def _require_present(self, ids: np.ndarray) -> None:
        missing = ids[~self.contains(ids)]
        if missing.size:
            raise KeyError(f"ids not in the index: {missing[:10].tolist()}{' ...' if missing.size > 10 else ''}")

    def upsert(self, ids, vectors, step: int = 0) -> None:
        """Insert new documents or overwrite existing ones in place.

        Args:
            ids: (n,) int64 document ids (any int64 value; -1 is reserved as padding).
            vectors: (n, d) finite embeddings the storage dtype holds (float16: |v| < 65520).
            step: the training step they were embedded at (for staleness), 0 ≤ step < 2³¹.
        """
        ids = as_ids("ids", ids)
        # Finiteness is checked by the C++ core, in parallel, before it changes anything.
        vectors = as_matrix("vectors", vectors, self.dim, check_finite=False)
        if vectors.shape[0] != ids.shape[0]:
            raise ValueError(f"vectors has {vectors.shape[0]} rows but ids has {ids.shape[0]}")
        if (ids == -1).any():
            raise ValueError("ids must not contain -1, which marks padding in search results")
        step = as_step(step)
        with self._writing:
            self._core.upsert(ids, vectors, step, self._threads())  # C++ invalid_argument -> ValueError

    def remove(self, ids) -> None:
        """Remove documents (O(1) each); every id must be present (KeyError otherwise, nothing removed)."""
        ids = as_ids("ids", ids)
        if np.unique(ids).size != ids.size:
            raise ValueError("ids to remove must be distinct")
        with self._writing:
            self._require_present(ids)
            self._core.remove(ids)

    def get(self, ids) -> np.ndarray:
        """(n, d) float32 stored vectors of present ids (KeyError for absent ones)."""
        ids = as_ids("ids", ids)
        self._require_present(ids)
        return self._core.get(ids)

    def ids(self) -> np.ndarray:
        """(n,) int64 ids of all documents, in storage order."""
        return self._core.ids()

    def __contains__(self, doc_id: int) -> bool:
        return bool(self.contains([doc_id])[0])

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by inner product.

        Args:
            queries: (q, d) query embeddings.
            k: results per query, > 0.

        Returns:
            scores float32 (q, k) and ids int64 (q, k), sorted by score (ties: smaller id
            first); id -1 and score -inf pad rows when the index holds fewer than k documents.
        """
        queries = as_matrix("queries", queries, self.dim)
        return self._core.search(queries, as_k(k), self._threads())

    def step_of(self, ids) -> np.ndarray:
        """(n,) int32 training step each present document was embedded at."""
        ids = as_ids("ids", ids)
        self._require_present(ids)
        return self._core.steps_of(ids)

    def record_retrieved(self, ids) -> None:
        """Count a retrieval of each id (any shape; -1 and unknown ids are ignored)."""
        array = as_integer_array("ids", ids).reshape(-1)
        with self._writing:
            self._core.record_retrieved(array)

    def stale_ids(self, budget: int, policy: str = "oldest") -> np.ndarray:
        """The next ≤ budget documents to re-embed.

        Args:
            budget: how many, ≥ 0.
            policy: "oldest" (smallest embedding step first: round-robin by age) or
                "hot" (most retrieved since their last upsert first, then oldest).
        """
        budget, policy = stale_arguments(budget, policy)
        return self._core.stale_ids(budget, policy)

    def drift(self, reset: bool = True) -> tuple[float, int]:
        """Mean cosine between old and new vectors of documents overwritten since the last reset, and their count.

        Near 1: the document encoder barely moved, a smaller refresh budget will do.
        """
        return self._core.drift(reset)

    def transform(self, matrix, older_than: int, normalize: bool = False) -> int:
        """Map every row embedded before step ``older_than`` through ``matrix`` in place: v <- v @ matrix.

        A drift corrector's write (`atlas_fast.index.corrector`): rows of older encoder versions are moved
        towards the current encoder's space without re-embedding them. Steps and retrieval counts stay.

        Args:
            matrix: (d, d) finite floats.
            older_than: rows with step < older_than are transformed, 0 ≤ older_than < 2³¹.
            normalize: rescale each mapped row to unit norm (an index of normalised embeddings; zero rows stay).

        Returns:
            How many rows were transformed.

        Raises:
            ValueError: a mapped row would not be finite in the storage dtype (inf or NaN); nothing changed.
        """
        matrix, older_than, normalize = transform_arguments(matrix, older_than, normalize, self.dim)
        with self._writing:  # the core refuses, changing nothing, a map that makes a row non-finite
            return int(self._core.transform(matrix, older_than, normalize, self._threads()))

    def memory_bytes(self) -> int:
        """Bytes held by the index (vector blocks, per-document metadata, id map)."""
        return self._core.memory_bytes()

    # ---- persistence -------------------------------------------------------------------

    def _header(self) -> bytes:
        # Rows are written in chunks of chunk_rows: ids, steps, retrieval counts, then vectors.
        header = {"dim": self.dim, "dtype": self.dtype, "count": len(self), "chunk_rows": CHUNK_ROWS}
        return json.dumps({**header, "metadata": self.metadata}).encode()

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` atomically: a temporary file, fsync, then rename.

        The file is one consistent snapshot: upserts, removes and retrieval counts from other
        threads wait until it is written (searches do not). A crash at any point leaves the
        previous file intact. The file is versioned
        and ends with a SHA-256 of its contents; no pickle is involved.
        """
        path = Path(path)
        _remove_stale_temporaries(path)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        digest = hashlib.sha256()
        try:
            with open(temporary, "wb") as file, self._writing:  # no upsert or remove between header and rows
                header = self._header()
                for part in (_PREAMBLE.pack(INDEX_MAGIC, _FORMAT_VERSION, len(header)), header):
                    file.write(part)
                    digest.update(part)
                for start in range(0, len(self), CHUNK_ROWS):
                    chunk = self._core.export_rows(start, min(CHUNK_ROWS, len(self) - start))
                    for array in chunk:
                        data = memoryview(np.ascontiguousarray(array)).cast("B")
                        file.write(data)
                        digest.update(data)
                file.write(digest.digest())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            if temporary.exists():
                temporary.unlink()
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, n_threads: int = 0) -> DocumentIndex:
        """Read an index written by `save`; refuses truncated, corrupted or foreign files.

        Args:
            path: the file.
            mmap: map the file instead of reading it into a buffer (less peak memory while
                loading; the index always holds its own copy afterwards: see `map` for one that does not).
            n_threads: as for the constructor.

        Raises:
            IndexFileError: wrong magic, unknown version, wrong size or checksum mismatch.
        """
        layout = _FileLayout.read(path)
        raw = np.memmap(layout.path, dtype=np.uint8, mode="r") if mmap else np.fromfile(layout.path, dtype=np.uint8)
        layout.verify_checksum(raw)
        index = cls(layout.dim, layout.dtype, n_threads)
        index._core.reserve(layout.count)
        for ids, steps, retrieved, vectors in layout.chunks(raw):
            _check_rows(layout.path, ids, steps, vectors, layout.dtype)
            index._core.append_raw(ids, steps, retrieved, np.ascontiguousarray(vectors))
        layout.check_unique(index)
        index.metadata = dict(layout.metadata)
        return index

    @classmethod
    def map(cls, path: str | os.PathLike, n_threads: int = 0) -> DocumentIndex:
        """Open an index file without reading or copying its rows: searches read them from the file's pages.

        Only the header and the per-row ids, steps and retrieval counts are read (16 bytes a row, for the id
        map); the checksum is not, so that opening a 1M-row index takes milliseconds. `verify` checks the whole
        file when wanted (a checkpoint's manifest already does, at resume). The file is never written: a row
        that changes (upsert, remove, transform) is first copied, with its block of 4,096 rows, into the
        index's own memory, and `save` writes a new file. Replacing the file by `save` (a rename) is safe;
        truncating it in place while it is mapped is not.

        Raises:
            IndexFileError: wrong magic, unknown version, wrong size, ids or steps no index holds.
        """
        layout = _FileLayout.read(path)
        raw = np.memmap(layout.path, dtype=np.uint8, mode="r")
        index = cls(layout.dim, layout.dtype, n_threads)
        if layout.chunk_rows % _ext.native().DocumentIndex.block_rows:
            raise IndexFileError(f"{layout.path}: chunk_rows {layout.chunk_rows} cannot be mapped (not whole blocks)")
        index._core.reserve(layout.count)
        for ids, steps, retrieved, vectors in layout.chunks(raw):
            _check_ids_and_steps(layout.path, ids, steps)
            try:
                index._core.attach_mapped(ids, steps, retrieved, vectors)  # refuses an id twice, as it goes
            except ValueError as error:
                raise IndexFileError(f"{layout.path}: duplicate ids ({error})") from None
        index.metadata = dict(layout.metadata)
        index._mapped = layout
        return index

    def verify(self) -> None:
        """Check a mapped index's file as `load` checks one at open: its SHA-256 and every row's values.

        Raises:
            IndexFileError: naming the file, when it is corrupted.
        """
        layout = getattr(self, "_mapped", None)
        if layout is None:
            return  # rows read by `load` or written here: checked when they came in
        raw = np.memmap(layout.path, dtype=np.uint8, mode="r")
        layout.verify_checksum(raw)
        for ids, steps, _, vectors in layout.chunks(raw):
            _check_rows(layout.path, ids, steps, vectors, layout.dtype)

    def mapped_bytes(self) -> int:
        """Bytes of rows served from a mapped file (`map`), not held in memory the index owns."""
        return self._core.mapped_bytes()


@dataclasses.dataclass
class _FileLayout:
    """Where an index file's parts are: its header's fields and the byte layout of its row chunks."""

    path: Path
    dim: int
    dtype: str
    count: int
    chunk_rows: int
    metadata: dict
    body_start: int
    vector_bytes: int
    size: int

    @classmethod
    def read(cls, path: str | os.PathLike) -> _FileLayout:
        path = Path(path)
        if not path.is_file():
            raise IndexFileError(f"{path}: no such index file" + (" (it is a directory)" if path.is_dir() else ""))
        _remove_stale_temporaries(path)
        size = path.stat().st_size
        with open(path, "rb") as file:
            preamble = file.read(_PREAMBLE.size)
            if len(preamble) < _PREAMBLE.size:
                raise IndexFileError(f"{path}: truncated (no header)")
            magic, version, header_length = _PREAMBLE.unpack(preamble)
            if magic != INDEX_MAGIC:
                raise IndexFileError(f"{path}: not an atlas_fast index file")
            if version != _FORMAT_VERSION:
                raise IndexFileError(f"{path}: format version {version}; this atlas_fast reads {_FORMAT_VERSION}")
            try:
                header = json.loads(file.read(header_length))
                dim, dtype, count, chunk_rows = (header[key] for key in ("dim", "dtype", "count", "chunk_rows"))
            except (ValueError, KeyError, TypeError, RecursionError) as error:
                raise IndexFileError(f"{path}: unreadable header ({type(error).__name__}: {error})") from error
        metadata = header.get("metadata", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in (*metadata, *metadata.values())):
            raise IndexFileError(f"{path}: invalid metadata (expected a mapping of strings)")
        integers_ok = all(type(value) is int for value in (dim, count, chunk_rows))
        if not integers_ok or dtype not in DTYPES or not 0 < dim <= _MAX_DIM or count < 0 or chunk_rows <= 0:
            raise IndexFileError(f"{path}: invalid header {str(header)[:200]}")
        body_start = _PREAMBLE.size + header_length
        vector_bytes = _ext.native().row_bytes(dtype, dim)
        layout = cls(path, dim, dtype, count, chunk_rows, metadata, body_start, vector_bytes, size)
        if size != body_start + count * (16 + vector_bytes) + 32:
            raise IndexFileError(f"{path}: size {size} bytes does not match its header (truncated or extended)")
        return layout

    def verify_checksum(self, raw: np.ndarray) -> None:
        digest = hashlib.sha256()
        for start in range(0, self.size - 32, 64 * 2**20):
            digest.update(raw[start : min(start + 64 * 2**20, self.size - 32)])
        if digest.digest() != raw[self.size - 32 :].tobytes():
            raise IndexFileError(f"{self.path}: checksum mismatch (the file is corrupted)")

    def chunks(self, raw: np.ndarray):
        """(ids, steps, retrieved, vectors) of each chunk of rows, views of ``raw`` (vectors in the storage type:
        float32, the bits of float16/bfloat16 as uint16, or int8 rows as bytes)."""
        storage = {"float32": np.float32, "int8": np.uint8}.get(self.dtype, np.uint16)
        width = self.vector_bytes // np.dtype(storage).itemsize
        offset = self.body_start
        for start in range(0, self.count, self.chunk_rows):
            n = min(self.chunk_rows, self.count - start)
            ids = raw[offset : offset + 8 * n].view(np.int64)
            steps = raw[offset + 8 * n : offset + 12 * n].view(np.int32)
            retrieved = raw[offset + 12 * n : offset + 16 * n].view(np.uint32)
            vectors = raw[offset + 16 * n : offset + n * (16 + self.vector_bytes)].view(storage).reshape(n, width)
            yield ids, steps, retrieved, vectors
            offset += n * (16 + self.vector_bytes)

    def check_unique(self, index: DocumentIndex) -> None:
        if np.unique(index.ids()).size != self.count:
            raise IndexFileError(f"{self.path}: duplicate ids")


def append_rows_where(target: DocumentIndex, source: DocumentIndex, keep) -> None:
    """Append to ``target`` the rows of ``source`` whose ids ``keep(ids) -> bool mask`` selects, with their
    steps and retrieval counts (resharding a saved index). The kept ids must be new to ``target``."""
    if (target.dim, target.dtype) != (source.dim, source.dtype):
        raise ValueError(f"cannot append {source!r} rows to {target!r}: dim and dtype must match")
    for start in range(0, len(source), CHUNK_ROWS):
        n = min(CHUNK_ROWS, len(source) - start)
        ids, steps, retrieved, raw = source._core.export_rows(start, n)
        kept = np.asarray(keep(ids), dtype=bool)
        if kept.any():
            rows = np.ascontiguousarray(raw.reshape(n, -1)[kept])
            with target._writing:
                target._core.append_raw(ids[kept], steps[kept], retrieved[kept], rows)
