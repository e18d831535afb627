"""TorchDocumentIndex: a DocumentIndex whose rows live in a torch tensor, on the GPU where the shard is used.

Atlas keeps each rank's shard in GPU memory and searches it with ``q.half() @ E`` and
``topk``, materialising a (queries × N) score matrix. Here search runs the fused
score-and-top-k kernel (atlas_fast/kernels/index_topk.py) on CUDA and never writes that matrix;
on CPU tensors it runs the chunked reference. The interface, the id map, staleness,
drift and the file format are the CPU DocumentIndex's (files are interchangeable:
persistence goes through host memory and the same writer). Upsert writes rows with
``index_copy_``; remove moves the last rows into the holes (swap-with-last).

Threads may share an index: one lock serialises every call (searches included, unlike
the CPU index, whose searches run during an upsert), so no call sees a half-written row
or a half-updated id map.

Differences from the CPU index: ids must lie in [0, 2³² − 1) (the kernel packs an id
and its score into one int64); rows in fp16/bf16 are scored with the queries rounded
to that dtype, as Atlas does.
"""

from __future__ import annotations

import functools
import os
import threading

import numpy as np
import torch

from atlas_fast import _dispatch, ops
from atlas_fast.index.arguments import (
    CHUNK_ROWS,
    DTYPES,
    as_ids,
    as_integer_array,
    as_k,
    as_matrix,
    as_step,
    beyond_range,
    stale_arguments,
    transform_arguments,
)
from atlas_fast.index.document_index import DocumentIndex
from atlas_fast.reference.index_topk import MAX_ID, SEARCH_MAX_K, search_ref

__all__ = ["TorchDocumentIndex"]

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _serialised(method):
    """Run ``method`` holding the index's lock: rows, id map and host metadata change together."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


class TorchDocumentIndex:
    """Exact inner-product index over rows held in a torch tensor on ``device``.

    Args:
        dim: embedding size d.
        dtype: row precision, "float32", "float16" or "bfloat16"; scores are float32.
        device: where the rows live ("cuda", "cuda:1", "cpu").
    """

    def __init__(self, dim: int, dtype: str = "float16", device: str | torch.device = "cuda"):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim must be a positive integer; got {dim!r}")
        if dtype not in _TORCH_DTYPES:
            held = f" ({dtype} rows are the host DocumentIndex's)" if dtype in DTYPES else ""
            raise ValueError(f"dtype must be one of {', '.join(_TORCH_DTYPES)}; got {dtype!r}{held}")
        self._dim, self._dtype, self.device = int(dim), dtype, torch.device(device)
        self._rows = torch.empty((0, self._dim), dtype=_TORCH_DTYPES[dtype], device=self.device)
        self._row_ids_device = torch.empty(0, dtype=torch.int64, device=self.device)
        self._count = 0
        self._row_of: dict[int, int] = {}
        self._ids = np.empty(0, dtype=np.int64)  # host metadata, per row
        self._steps = np.empty(0, dtype=np.int32)
        self._retrieved = np.empty(0, dtype=np.uint32)
        self._drift_sum, self._drift_count = 0.0, 0
        self._lock = threading.RLock()  # re-entrant: public methods call one another
        self.metadata: dict[str, str] = {}  # saved with the index (DocumentIndex.metadata)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def dtype(self) -> str:
        return self._dtype

    @_serialised
    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (
            f"TorchDocumentIndex(dim={self.dim}, dtype={self.dtype!r}, device='{self.device}', documents={len(self)})"
        )

    # ---- rows and ids ------------------------------------------------------------------
    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        return np.fromiter((self._row_of.get(int(i), -1) for i in ids), dtype=np.int64, count=ids.size)

    @_serialised
    def contains(self, ids) -> np.ndarray:
        """(n,) bool: whether each id is in the index."""
        return self._rows_of(as_ids("ids", ids)) >= 0

    @_serialised
    def __contains__(self, doc_id: int) -> bool:
        return bool(self.contains([doc_id])[0])

    def _require_present(self, ids: np.ndarray) -> np.ndarray:
        rows = self._rows_of(ids)
        missing = ids[rows < 0]
        if missing.size:
            raise KeyError(f"ids not in the index: {missing[:10].tolist()}{' ...' if missing.size > 10 else ''}")
        return rows

    @_serialised
    def ids(self) -> np.ndarray:
        """(n,) int64 ids of all documents, in storage order."""
        return self._ids[: self._count].copy()

    def _reserve(self, count: int) -> None:
        """Grow the row storage geometrically so that n upserts cost O(n) copies in all."""
        capacity = self._rows.shape[0]
        if count <= capacity:
            return
        capacity = max(count, 2 * capacity, 1024)
        rows = torch.empty((capacity, self._dim), dtype=self._rows.dtype, device=self.device)
        rows[: self._count] = self._rows[: self._count]
        row_ids = torch.empty(capacity, dtype=torch.int64, device=self.device)
        row_ids[: self._count] = self._row_ids_device[: self._count]
        self._rows, self._row_ids_device = rows, row_ids
        for name in ("_ids", "_steps", "_retrieved"):
            array = getattr(self, name)
            grown = np.zeros(capacity, dtype=array.dtype)
            grown[: self._count] = array[: self._count]
            setattr(self, name, grown)

    @_serialised
    def upsert(self, ids, vectors, step: int = 0) -> None:
        """Insert new documents or overwrite existing ones in place (duplicate ids: the last wins).

        Args:
            ids: (n,) int64 ids in [0, 2³² − 1).
            vectors: (n, d) embeddings (numpy, or a torch tensor on any device).
            step: the training step they were embedded at, 0 ≤ step < 2³¹.
        """
        ids = as_ids("ids", ids)
        if isinstance(vectors, torch.Tensor):
            if vectors.dim() != 2 or vectors.shape[1] != self._dim:
                raise ValueError(f"vectors must have shape (n, {self._dim}); got {tuple(vectors.shape)}")
            if not vectors.is_floating_point():
                raise ValueError(f"vectors must hold floats; got dtype {vectors.dtype}")
            values = vectors.detach().to(self.device, torch.float32)
            if not torch.isfinite(values).all():
                raise ValueError("vectors contains NaN or infinite values")
        else:
            values = torch.from_numpy(as_matrix("vectors", vectors, self._dim)).to(self.device)
        if not torch.isfinite(values.to(self._rows.dtype)).all():
            raise ValueError(beyond_range("vectors", self._dtype))
        if values.shape[0] != ids.shape[0]:
            raise ValueError(f"vectors has {values.shape[0]} rows but ids has {ids.shape[0]}")
        if ids.size and (ids.min() < 0 or ids.max() >= MAX_ID):
            raise ValueError(f"ids must lie in [0, 2**32 - 1) for a TorchDocumentIndex; got {ids.min()}..{ids.max()}")
        step = as_step(step)
        # The last occurrence of a repeated id wins, as in the CPU index.
        last = ids.size - 1 - np.unique(ids[::-1], return_index=True)[1]
        ids, values = ids[last], values[torch.from_numpy(last).to(self.device)]
        rows = self._rows_of(ids)
        new = rows < 0
        rows[new] = self._count + np.arange(int(new.sum()))
        self._reserve(self._count + int(new.sum()))
        old = rows[~new]
        if old.size:
            old_index = torch.from_numpy(old).to(self.device)
            cosine = torch.nn.functional.cosine_similarity(
                self._rows[old_index].float(), values[torch.from_numpy(np.flatnonzero(~new)).to(self.device)], dim=1
            )
            self._drift_sum += float(cosine.double().sum())
            self._drift_count += int(old.size)
        row_index = torch.from_numpy(rows).to(self.device)
        self._rows.index_copy_(0, row_index, values.to(self._rows.dtype))
        self._row_ids_device.index_copy_(0, row_index, torch.from_numpy(ids).to(self.device))
        for doc_id, row in zip(ids[new].tolist(), rows[new].tolist(), strict=True):
            self._row_of[doc_id] = row
        self._ids[rows] = ids
        self._steps[rows] = step
        self._retrieved[rows] = 0
        self._count += int(new.sum())

    @_serialised
    def remove(self, ids) -> None:
        """Remove documents: the last rows move into the holes. Every id must be present (KeyError otherwise)."""
        ids = as_ids("ids", ids)
        if np.unique(ids).size != ids.size:
            raise ValueError("ids to remove must be distinct")
        rows = self._require_present(ids)
        remaining = self._count - rows.size
        holes = np.sort(rows[rows < remaining])
        leaving = np.zeros(self._count - remaining, dtype=bool)
        leaving[rows[rows >= remaining] - remaining] = True
        movers = remaining + np.flatnonzero(~leaving)  # rows past the end that stay, in order
        if holes.size:
            hole_index, mover_index = (torch.from_numpy(a).to(self.device) for a in (holes, movers))
            self._rows[hole_index] = self._rows[mover_index]
            self._row_ids_device[hole_index] = self._row_ids_device[mover_index]
            for name in ("_ids", "_steps", "_retrieved"):
                array = getattr(self, name)
                array[holes] = array[movers]
        for doc_id in ids.tolist():
            del self._row_of[doc_id]
        for row in holes.tolist():
            self._row_of[int(self._ids[row])] = row
        self._count = remaining

    @_serialised
    def get(self, ids) -> np.ndarray:
        """(n, d) float32 stored vectors of present ids (KeyError for absent ones)."""
        rows = self._require_present(as_ids("ids", ids))
        return self._rows[torch.from_numpy(rows).to(self.device)].float().cpu().numpy()

    # ---- search ------------------------------------------------------------------------
    @_serialised
    def search_tensors(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k on the index's device: scores (q, k) float32 and ids (q, k) int64 tensors, ties by smaller id."""
        k = as_k(k)
        if queries.dim() != 2 or queries.shape[1] != self._dim:
            raise ValueError(f"queries must have shape (n, {self._dim}); got {tuple(queries.shape)}")
        queries = queries.to(self.device, torch.float32)
        rows, row_ids = self._rows[: self._count], self._row_ids_device[: self._count]
        on_cpu = "the fused kernel serves CUDA shards; CPU tensors use the chunked reference"
        backend = _dispatch.choose_backend("index_topk", self.device, on_cpu if self.device.type != "cuda" else None)
        if backend == "triton" and self._count:
            if k <= SEARCH_MAX_K:
                return ops.index_topk(queries, rows, row_ids, int(k))  # imports triton: CUDA only
            if _dispatch.requested_backend() == "triton":
                limit = f"the kernel's limit of {SEARCH_MAX_K}"
                raise _dispatch.TritonUnavailable(f"index_topk: k = {k} is above {limit}")
        return search_ref(queries, rows, row_ids, int(k))

    @_serialised
    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k, as DocumentIndex.search: numpy scores float32 (q, k) and ids int64 (q, k)."""
        if not isinstance(queries, torch.Tensor):
            queries = torch.from_numpy(as_matrix("queries", queries, self._dim))
        elif not torch.isfinite(queries).all():
            raise ValueError("queries contains NaN or infinite values")
        scores, ids = self.search_tensors(queries, k)
        return scores.cpu().numpy(), ids.cpu().numpy()

    # ---- staleness ---------------------------------------------------------------------
    @_serialised
    def step_of(self, ids) -> np.ndarray:
        """(n,) int32 step each present id was last embedded at."""
        return self._steps[self._require_present(as_ids("ids", ids))].copy()

    @_serialised
    def record_retrieved(self, ids) -> None:
        """Count a retrieval of each id (any shape; -1 and unknown ids are ignored)."""
        rows = self._rows_of(as_integer_array("ids", ids).reshape(-1))
        rows = rows[rows >= 0]
        np.add.at(self._retrieved, rows, 1)

    @_serialised
    def stale_ids(self, budget: int, policy: str = "oldest") -> np.ndarray:
        """The next ≤ budget documents to re-embed ("oldest": smallest step first; "hot": most retrieved first)."""
        budget, policy = stale_arguments(budget, policy)
        n = self._count
        keys = (self._ids[:n], self._steps[:n])
        if policy == "hot":
            keys = (*keys, -self._retrieved[:n].astype(np.int64))
        return self._ids[np.lexsort(keys)[:budget]].copy()

    @_serialised
    def drift(self, reset: bool = True) -> tuple[float, int]:
        """Mean cosine between old and new vectors of documents overwritten since the last reset, and their count."""
        result = (self._drift_sum / self._drift_count if self._drift_count else 0.0, self._drift_count)
        if reset:
            self._drift_sum, self._drift_count = 0.0, 0
        return result

    @_serialised
    def transform(self, matrix, older_than: int, normalize: bool = False) -> int:
        """Map every row embedded before step ``older_than`` through ``matrix`` in place (see DocumentIndex)."""
        matrix, older_than, normalize = transform_arguments(matrix, older_than, normalize, self._dim)
        rows = np.flatnonzero(self._steps[: self._count] < older_than)
        if rows.size:
            index = torch.from_numpy(rows).to(self.device)
            mapped = self._rows[index].float() @ torch.from_numpy(matrix).to(self.device)
            if normalize:  # in float64: fp32 squares of large rows overflow, a norm of subnormals underflows
                wide = mapped.double()
                norms = wide.norm(dim=1, keepdim=True)
                mapped = torch.where(norms > 0, wide / norms, wide) if torch.isfinite(wide).all() else mapped
            stored = mapped.to(self._rows.dtype)
            if not torch.isfinite(stored).all():  # refused before anything changes, as in the C++ core
                beyond = "float32" if normalize else self._dtype
                raise ValueError(
                    f"transform: the matrix maps some rows beyond {beyond}'s range (they would be stored as infinite "
                    "or NaN); the index is unchanged"
                )
            self._rows[index] = stored
        return int(rows.size)

    @_serialised
    def memory_bytes(self) -> int:
        """Bytes held: row storage (device) plus per-document metadata (host)."""
        rows = self._rows.numel() * self._rows.element_size() + self._row_ids_device.numel() * 8
        # The id -> row dict: about 100 bytes a CPython entry (key, value and table slot).
        return rows + self._ids.nbytes + self._steps.nbytes + self._retrieved.nbytes + 100 * len(self._row_of)

    # ---- persistence (through host memory, the CPU index's file format) ----------------
    @_serialised
    def to_document_index(self) -> DocumentIndex:
        """A CPU DocumentIndex with the same rows, steps and retrieval counts."""
        index = DocumentIndex(self._dim, self._dtype)
        chunk = CHUNK_ROWS
        for start in range(0, self._count, chunk):
            stop = min(start + chunk, self._count)
            rows = self._rows[start:stop].cpu()
            raw = rows.numpy() if self._dtype == "float32" else rows.view(torch.int16).numpy().view(np.uint16)
            index._core.append_raw(self._ids[start:stop], self._steps[start:stop], self._retrieved[start:stop], raw)
        index.metadata = dict(self.metadata)
        return index

    @classmethod
    def from_document_index(cls, index: DocumentIndex, device: str | torch.device = "cuda") -> TorchDocumentIndex:
        """Copy a CPU DocumentIndex (rows, steps, retrieval counts) to ``device``."""
        result = cls(index.dim, index.dtype, device)
        result.metadata = dict(index.metadata)
        result._reserve(len(index))
        chunk = CHUNK_ROWS
        for start in range(0, len(index), chunk):
            n = min(chunk, len(index) - start)
            ids, steps, retrieved, raw = index._core.export_rows(start, n)
            rows = torch.from_numpy(raw) if index.dtype == "float32" else torch.from_numpy(raw.view(np.int16))
            rows = rows.view(result._rows.dtype).reshape(n, index.dim)
            result._rows[start : start + n] = rows.to(result.device)
            result._row_ids_device[start : start + n] = torch.from_numpy(ids).to(result.device)
            result._ids[start : start + n], result._steps[start : start + n] = ids, steps
            result._retrieved[start : start + n] = retrieved
            result._row_of.update(zip(ids.tolist(), range(start, start + n), strict=True))
            result._count += n
        return result

    @_serialised
    def save(self, path: str | os.PathLike) -> None:
        """Write the CPU index's file format, atomically (see DocumentIndex.save)."""
        self.to_document_index().save(path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cuda") -> TorchDocumentIndex:
        """Read a file written by either index's `save`, onto ``device``."""
        return cls.from_document_index(DocumentIndex.load(path), device)
