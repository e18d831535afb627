"""Type stub of the private native module (csrc/). Use atlas_fast.index, whose wrappers validate arguments."""

import numpy as np
import numpy.typing as npt

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]

def merge_topk(
    scores: Vectors, ids: Ids, k: int, n_threads: int = 0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def build_info() -> dict[str, object]: ...
def row_bytes(dtype: str, dim: int) -> int:
    """Bytes of one stored row of ``dim`` values (int8: the values, padding to 4, the fp32 scale)."""

def simd_error() -> str: ...

class DocumentIndex:
    """Rows of ``dim`` values stored as ``dtype`` ("float32", "float16", "bfloat16", "int8"), an id map and per-row
    embedding step and retrieval count. Every method but the constructor releases the GIL."""

    block_rows: int  # rows per storage block (4,096): the unit a mapped row is copied in before a write
    def __init__(self, dim: int, dtype: str) -> None: ...
    @property
    def dim(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    def __len__(self) -> int: ...
    def upsert(self, ids: Ids, vectors: Vectors, step: int, n_threads: int = 0) -> None:
        """(n,) ids, (n, dim) finite vectors; later duplicates win. ValueError (non-finite), nothing changed."""
    def remove(self, ids: Ids) -> None:
        """Present, distinct ids; ValueError otherwise, before anything changes."""
    def rows_of(self, ids: Ids) -> Ids:
        """(n,) the row of each id, or -1."""
    def get(self, ids: Ids) -> Vectors:
        """(n, dim) float32 of present ids (ValueError naming an absent one)."""
    def ids(self) -> Ids:
        """(N,) every id, in row order."""
    def search(
        self, queries: Vectors, k: int, n_threads: int = 0
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """(q, dim) queries -> (q, k) scores and ids, by score then smaller id; -inf / -1 pad."""
    def steps_of(self, ids: Ids) -> npt.NDArray[np.int32]: ...
    def record_retrieved(self, ids: Ids) -> None:
        """Counts one retrieval of each present id (-1 and unknown ids are skipped)."""
    def stale_ids(self, budget: int, policy: str) -> Ids:
        """Up to ``budget`` ids: "oldest" step first, or "hot" (most retrieved) first; ties by smaller id."""
    def drift(self, reset: bool) -> tuple[float, int]: ...
    def transform(
        self, matrix: npt.NDArray[np.float32], older_than: int, normalize: bool = False, n_threads: int = 0
    ) -> int:
        """v <- v @ matrix for rows with step < older_than (unit norm after, with ``normalize``); rows transformed."""
    def export_rows(
        self, start: int, count: int
    ) -> tuple[Ids, npt.NDArray[np.int32], npt.NDArray[np.uint32], npt.NDArray[np.generic]]:
        """Rows [start, start + count): ids, steps, retrieval counts, raw stored values (float32; fp16/bf16 as
        uint16 bits; int8 rows as (count, row_bytes) uint8)."""
    def append_raw(
        self,
        ids: Ids,
        steps: npt.NDArray[np.int32],
        retrieved: npt.NDArray[np.uint32],
        raw: npt.NDArray[np.generic],
    ) -> None:
        """Appends rows of new ids as `export_rows` returns them."""
    def attach_mapped(
        self,
        ids: Ids,
        steps: npt.NDArray[np.int32],
        retrieved: npt.NDArray[np.uint32],
        raw: npt.NDArray[np.generic],
    ) -> None:
        """As `append_raw`, but the rows stay in ``raw`` (read-only memory, kept alive by the index); the index
        must end at a block boundary and the ids be new and distinct (ValueError otherwise, nothing changed)."""
    def memory_bytes(self) -> int:
        """Bytes the index owns (mapped rows excluded)."""
    def mapped_bytes(self) -> int:
        """Bytes of rows served from mapped memory."""
