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

The policy owns everything refresh touches: it is given the index and an ``embed(ids)``
callable, and the trainer calls it at two points of a step, `retrieve` and `after_step`.
`documents_embedded` counts every document embedding made after the initial build: the
cost side of the comparison.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from atlas_fast.index.protocol import Index

__all__ = ["POLICIES", "RefreshPolicy", "trains_passage_encoder"]

POLICIES = ("none", "full", "incremental", "rerank", "query-side")

# ids (n,) int64 -> (n, d) float32 embeddings by the current passage encoder.
Embed = Callable[[np.ndarray], np.ndarray]


def trains_passage_encoder(policy: str, query_side_only: bool = False) -> bool:
    """Whether the passage encoder receives gradients: not under "query-side" (or query-side-only training)."""
    return policy != "query-side" and not query_side_only


class RefreshPolicy:
    """Decides and performs the refresh of an index while the passage encoder trains.

    Args:
        name: one of POLICIES.
        index: the index it keeps fresh (for a ShardedIndex, every call is made by every rank).
        embed: embeddings of document ids by the current passage encoder, (n,) -> (n, d) float32.
        owned_ids: the ids this rank embeds (for "full": all of them, or this rank's shard).
        every: "full" refreshes when step % every == 0.
        budget: "incremental" documents per step.
        order: "oldest" or "hot" for "incremental".
        candidates: "rerank" documents retrieved per query before re-scoring.
    """

    def __init__(
        self,
        name: str,
        index: Index,
        embed: Embed,
        owned_ids: Callable[[], np.ndarray],
        every: int = 50,
        budget: int = 64,
        order: str = "oldest",
        candidates: int = 20,
    ):
        if name not in POLICIES:
            raise ValueError(f"refresh policy must be one of {', '.join(POLICIES)}; got {name!r}")
        self.name = name
        self.index = index
        self.embed = embed
        self.owned_ids = owned_ids
        self.every = every
        self.budget = budget
        self.order = order
        self.candidates = candidates
        self.documents_embedded = 0

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        self.documents_embedded += int(ids.size)
        return self.embed(ids) if ids.size else np.empty((0, self.index.dim), np.float32)

    def build(self) -> None:
        """Embed every document this rank owns into the index at step 0 (not counted as refresh cost)."""
        ids = self.owned_ids()
        self.index.upsert(ids, self.embed(ids), step=0)

    def retrieve(self, query_emb: torch.Tensor, k: int) -> np.ndarray:
        """(B, k) int64 ids of the top-k documents of each (B, d) query, recorded as retrieved.

        "rerank" takes ``candidates`` from the index and keeps the top-k of their fresh scores.
        """
        depth = max(self.candidates, k) if self.name == "rerank" else k
        _, ids = self.index.search(query_emb.float().cpu().numpy(), depth)
        if self.name == "rerank":
            ids = self._rerank(query_emb, ids, k)
        self.index.record_retrieved(ids)
        return ids

    def _rerank(self, query_emb: torch.Tensor, candidate_ids: np.ndarray, k: int) -> np.ndarray:
        fresh = torch.from_numpy(self._embed(candidate_ids.reshape(-1))).view(*candidate_ids.shape, -1)
        scores = torch.einsum("bd,bkd->bk", query_emb.float().cpu(), fresh)
        order = scores.topk(k, dim=1).indices.numpy()
        return np.take_along_axis(candidate_ids, order, axis=1)

    def ids_to_refresh(self, step: int) -> np.ndarray:
        """The ids this rank re-embeds after optimiser step ``step`` (1-based)."""
        if self.name == "full" and step % self.every == 0:
            return self.owned_ids()
        if self.name == "incremental":
            return self.index.stale_ids(self.budget, self.order)
        return np.empty(0, dtype=np.int64)

    def after_step(self, step: int, encoder_changed: bool = True) -> int:
        """Re-embed this step's documents into the index; returns how many this rank re-embedded.

        ``encoder_changed``: False when the passage encoder did not train this step (nothing went stale).
        """
        ids = self.ids_to_refresh(step) if encoder_changed else np.empty(0, dtype=np.int64)
        # Also when empty: a ShardedIndex's upsert is collective, and every rank takes part.
        self.index.upsert(ids, self._embed(ids), step=step)
        return int(ids.size)

    def state_dict(self) -> dict:
        return {"documents_embedded": self.documents_embedded}

    def load_state_dict(self, state: dict) -> None:
        self.documents_embedded = int(state["documents_embedded"])
