"""Refresh policies: which documents get re-embedded while the passage encoder trains.

The index holds embeddings made by an older passage encoder. Atlas re-embeds the
whole corpus every N steps ("full"); the alternatives here trade freshness for cost:

- "none": never refresh (the passage encoder trains, the index goes stale);
- "full": re-embed every document every ``every`` steps (Atlas's refresh_index);
- "incremental": re-embed ``budget`` documents per step, the least recently embedded
  first (or the most retrieved, order="hot"), written in place with `upsert`;
- "rerank": leave the index alone, but over-retrieve ``candidates`` documents per
  query and re-score them with the current encoder (cost paid per query, not per corpus);
- "query-side": the passage encoder is frozen, so the index never goes stale (RAG).

`documents_embedded` counts every document embedding made after the initial build:
the cost side of the comparison.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["RefreshPolicy"]


class RefreshPolicy:
    """Decides and performs the per-step refresh of a DocumentIndex (or one rank's shard of a ShardedIndex).

    Args:
        name: one of "none", "full", "incremental", "rerank", "query-side".
        every: "full" refreshes when step % every == 0.
        budget: "incremental" documents per step.
        order: "oldest" or "hot" for "incremental".
        candidates: "rerank" documents retrieved per query before re-scoring.
    """

    def __init__(self, name: str, every: int = 50, budget: int = 64, order: str = "oldest", candidates: int = 20):
        self.name = name
        self.every = every
        self.budget = budget
        self.order = order
        self.candidates = candidates
        self.documents_embedded = 0

    def retrieval_depth(self, k: int) -> int:
        """How many documents to take from the index for a top-k answer."""
        return max(self.candidates, k) if self.name == "rerank" else k

    def ids_to_refresh(self, step: int, local_index, owned_ids: Callable[[], np.ndarray]) -> np.ndarray:
        """The ids this rank re-embeds after optimiser step ``step`` (1-based)."""
        if self.name == "full" and step % self.every == 0:
            return owned_ids()
        if self.name == "incremental":
            return local_index.stale_ids(self.budget, self.order)
        return np.empty(0, dtype=np.int64)
