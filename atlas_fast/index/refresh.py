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

Three options make a refresh do more with the embeddings it pays for:
- ``normalize``: every embedding written to the index is rescaled to unit norm, so retrieval ranks by
  cosine. Joint training shrinks the retriever's embeddings, so in a dot-product index the rows of newer
  encoder versions score below every older row and drop out of the top-k; unit rows compete on direction
  alone (docs/experiments/refresh.md, the diagnosis);
- ``corrector`` ("procrustes" | "linear", atlas_fast.index.corrector): after each refresh, a
  map fitted from the re-embedded documents' old to new vectors is applied in place to every
  row of an older encoder version (then rescaled to unit norm under ``normalize``).
  With ``corrector_fit = "accumulated"`` the map is fitted on every pair re-embedded since the policy
  started, not on this step's alone: the pairs' moments are summed (`corrector.map_from_moments`), in
  the coordinates of the rows as first embedded, and each step applies the change from the previous map;
- ``write_back`` ("rerank"): the candidates re-embedded for reranking during training are
  upserted into the index, so the per-query cost doubles as refresh.

The policy owns everything refresh touches: it is given the index and an ``embed(ids)``
callable (the trainer's corpus), and is called at two points of a step: `retrieve` (every
retrieval goes through it) and `after_step`.
`documents_embedded` counts every document embedding made after the initial build: the
cost side of the comparison.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

from atlas_fast.index.corrector import CORRECTOR_FITS, CORRECTORS, fit_map, map_from_moments
from atlas_fast.index.protocol import Index
from atlas_fast.index.sharded import ShardedIndex

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
        corrector: one of CORRECTORS ("none" keeps older rows as they are).
        write_back: "rerank" upserts its fresh candidate embeddings when retrieving for training.
        normalize: write unit-norm embeddings (retrieval by cosine); an index restored from a checkpoint of
            a dot-product run is normalised in place when the state is loaded.
        ridge: the corrector's pull towards the identity (`corrector.fit_map`).
        corrector_fit: "step" fits the corrector on this step's pairs; "accumulated" on every pair so far.
    """

    def __init__(
        self,
        name: str,
        index: Index,
        embed: Embed,
        owned_ids: Callable[[], np.ndarray],
        *,
        every: int = 50,
        budget: int = 64,
        order: str = "oldest",
        candidates: int = 20,
        corrector: str = "none",
        write_back: bool = False,
        normalize: bool = False,
        ridge: float = 1.0,
        corrector_fit: str = "step",
    ):
        if name not in POLICIES:
            raise ValueError(f"refresh policy must be one of {', '.join(POLICIES)}; got {name!r}")
        if corrector not in CORRECTORS:
            raise ValueError(f"corrector must be one of {', '.join(CORRECTORS)}; got {corrector!r}")
        if corrector_fit not in CORRECTOR_FITS:
            raise ValueError(f"corrector_fit must be one of {', '.join(CORRECTOR_FITS)}; got {corrector_fit!r}")
        self.name = name
        self.index = index
        self.embed = embed
        self.owned_ids = owned_ids
        self.every = every
        self.budget = budget
        self.order = order
        self.candidates = candidates
        self.corrector = corrector
        self.write_back = write_back
        self.normalize = normalize
        self.ridge = ridge
        self.documents_embedded = 0
        self.rows_corrected = 0  # rows the corrector has transformed, summed over steps
        self.corrector_fit = corrector_fit
        # "accumulated": the map applied so far to rows as first embedded, and the moments of every pair in those
        # coordinates (float64: sums over many steps).
        self.applied = np.eye(index.dim)
        self.gram = np.zeros((index.dim, index.dim))
        self.cross = np.zeros((index.dim, index.dim))

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        self.documents_embedded += int(ids.size)
        return self.as_stored(self.embed(ids)) if ids.size else np.empty((0, self.index.dim), np.float32)

    def as_stored(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors`` as the index stores them: unit norm under ``normalize`` (a zero vector stays zero)."""
        if not self.normalize:
            return vectors
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32)

    def build(self) -> None:
        """Embed every document this rank owns into the index at step 0 (not counted as refresh cost)."""
        ids = self.owned_ids()
        self.index.upsert(ids, self.as_stored(self.embed(ids)), step=0)

    def retrieve(self, query_emb: torch.Tensor, k: int, step: int | None = None) -> np.ndarray:
        """(B, k) int64 ids of the top-k documents of each (B, d) query.

        A retrieval for training step ``step`` is recorded (`Index.record_retrieved`: what order="hot"
        re-embeds first); an evaluation's (``step`` None) changes nothing, or the dev questions' passages
        would be refreshed first and the recall they measure would be the dev set's own doing.
        "rerank" takes ``candidates`` from the index and keeps the top-k of their fresh scores; with
        ``write_back``, a retrieval for training also upserts those fresh embeddings at that step.
        """
        depth = max(self.candidates, k) if self.name == "rerank" else k
        _, ids = self.index.search(query_emb.float().cpu().numpy(), depth)
        if self.name == "rerank":
            ids = self._rerank(query_emb, ids, k, step)
        if step is not None:  # collective for a ShardedIndex: every rank evaluates, or trains, together
            self.index.record_retrieved(ids)
        return ids

    def _rerank(self, query_emb: torch.Tensor, candidate_ids: np.ndarray, k: int, step: int | None) -> np.ndarray:
        """The top-k of (B, C) candidates by their fresh scores; the -1 padding of a corpus smaller than C is
        neither embedded nor counted, and stays last (padding of the result when the corpus is smaller than k)."""
        flat = candidate_ids.reshape(-1)
        present = flat != -1
        fresh_present = self._embed(flat[present])
        if self.write_back and step is not None:
            unique, first = np.unique(flat[present], return_index=True)
            self.index.upsert(unique, fresh_present[first], step=step)  # collective for a ShardedIndex
        fresh = torch.zeros(flat.size, self.index.dim)
        fresh[torch.from_numpy(present)] = torch.from_numpy(fresh_present)
        scores = torch.einsum("bd,bkd->bk", query_emb.float().cpu(), fresh.view(*candidate_ids.shape, -1))
        scores[torch.from_numpy(candidate_ids == -1)] = float("-inf")
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
        vectors = self._embed(ids)
        correct = self.corrector != "none" and encoder_changed
        old = self.index.get(ids) if correct else None  # collective for a ShardedIndex: before the overwrite
        # Also when empty: a ShardedIndex's upsert is collective, and every rank takes part.
        self.index.upsert(ids, vectors, step=step)
        if correct and self.corrector_fit == "accumulated":
            matrix = self._accumulated_map_change(old, vectors)
            self.rows_corrected += self.index.transform(matrix, older_than=step, normalize=self.normalize)
        elif correct and ids.size:  # each rank corrects its own rows with the map its own documents fit
            matrix = fit_map(old, vectors, self.corrector, self.ridge)
            self.rows_corrected += self.index.transform(matrix, older_than=step, normalize=self.normalize)
        return int(ids.size)

    def _accumulated_map_change(self, old: np.ndarray, fresh: np.ndarray) -> np.ndarray:
        """The (d, d) map that carries every older row from the previous accumulated map to the new one.

        The stored rows are the first-embedded ones times ``applied`` (rescaled under ``normalize``), so
        ``old`` · applied⁻¹ puts this step's pairs in first-embedded coordinates, where their moments join the
        earlier pairs'. A row re-embedded at step s has since been moved by M_s⁻¹ M_t: its drift from s to t
        as the pooled fit models it. Over ranks the moments are summed, so every rank applies the same map
        (and rank 0's checkpoint holds it).
        """
        first = np.linalg.solve(self.applied.T, np.asarray(old, dtype=np.float64).T).T  # old @ applied⁻¹
        if self.normalize:
            first /= np.maximum(np.linalg.norm(first, axis=1, keepdims=True), np.finfo(np.float64).tiny)
        moments = torch.from_numpy(np.stack([first.T @ first, first.T @ np.asarray(fresh, dtype=np.float64)]))
        if isinstance(self.index, ShardedIndex):  # pool every rank's pairs
            dist.all_reduce(moments, group=self.index.group)
        self.gram += moments[0].numpy()
        self.cross += moments[1].numpy()
        if not self.gram.any():  # no pair yet on any rank: nothing to fit
            return np.eye(self.index.dim, dtype=np.float32)
        target = map_from_moments(self.gram, self.cross, self.corrector, self.ridge).astype(np.float64)
        change = np.linalg.solve(self.applied, target)  # applied⁻¹ · target
        self.applied = target
        return change.astype(np.float32)

    def state_dict(self) -> dict:
        state = {"documents_embedded": self.documents_embedded, "index_normalized": self.normalize}
        if self.corrector_fit == "accumulated":
            state["corrector"] = {name: torch.from_numpy(getattr(self, name)) for name in ("applied", "gram", "cross")}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore the counts (after ``index`` was set to the checkpoint's); a dot-product index (a state without
        "index_normalized": an older checkpoint) is normalised in place when this policy normalises."""
        self.documents_embedded = int(state["documents_embedded"])
        for name, value in state.get("corrector", {}).items() if self.corrector_fit == "accumulated" else ():
            setattr(self, name, value.double().numpy().copy())
        if self.normalize and not state.get("index_normalized", False):
            self.index.transform(np.eye(self.index.dim, dtype=np.float32), older_than=2**31 - 1, normalize=True)
