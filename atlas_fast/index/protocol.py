"""The contract every atlas_fast index implements: DocumentIndex, TorchDocumentIndex and ShardedIndex.

Code that trains against an index (the trainer, the refresh policy, evaluation) depends on
this Protocol only, and gets its index from `open_index` / `load_index`
(atlas_fast.index.factory). For a ShardedIndex every method is collective (all ranks call it,
each with its own arguments) except `stale_ids` and `transform`, which answer for this
rank's shard: each rank re-embeds (and corrects) the documents it owns. The properties
(`dim`, `dtype`, `metadata`) are local reads; `metadata` is saved by rank 0, so every rank sets
the same values. Arguments are checked by atlas_fast.index.arguments, the same way everywhere.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Index"]


@runtime_checkable
class Index(Protocol):
    """Exact inner-product search over document embeddings, updated in place, with staleness records.

    Shapes: n ids, q queries, d = ``dim``. Ids are int64 (-1 is reserved: it pads search results).
    """

    metadata: dict[str, str]
    """Saved and loaded with the index: where its rows came from (passages_fingerprint, retriever_fingerprint)."""

    @property
    def dim(self) -> int:
        """Embedding size d."""

    @property
    def dtype(self) -> str:
        """Storage precision: "float32", "float16", "bfloat16" or "int8" (the C++ DocumentIndex's only)."""

    def __len__(self) -> int:
        """Documents held."""

    def contains(self, ids) -> np.ndarray:
        """(n,) bool: whether each id is held."""

    def upsert(self, ids, vectors, step: int = 0) -> None:
        """Insert or overwrite (n,) ids with (n, d) vectors embedded at training step ``step``."""

    def remove(self, ids) -> None:
        """Remove (n,) present ids (KeyError, and nothing removed, when one is absent)."""

    def get(self, ids) -> np.ndarray:
        """(n, d) float32 stored vectors of present ids (KeyError for absent ones)."""

    def ids(self) -> np.ndarray:
        """(N,) int64 every id held."""

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(q, d) queries -> scores float32 (q, k), ids int64 (q, k): exact top-k, -1 / -inf padded."""

    def step_of(self, ids) -> np.ndarray:
        """(n,) int32 step each present id was last embedded at."""

    def record_retrieved(self, ids) -> None:
        """Count one retrieval of each id (any shape; -1 and unknown ids are ignored)."""

    def stale_ids(self, budget: int, policy: str = "oldest") -> np.ndarray:
        """(≤ budget,) int64 the next ids to re-embed: "oldest" step first, or "hot" (most retrieved) first."""

    def transform(self, matrix, older_than: int, normalize: bool = False) -> int:
        """v <- v @ matrix (d, d) in place for every row embedded before step ``older_than`` (then rescaled to unit
        norm with ``normalize``); returns how many."""

    def drift(self, reset: bool = True) -> tuple[float, int]:
        """(mean cosine of old and new vectors of documents overwritten since the last reset, their count)."""

    def memory_bytes(self) -> int:
        """Bytes held by rows and metadata."""

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically; `load_index` reads it back."""
