"""The corpus as the retriever sees it, and the questions' top-k passages from the index the refresh policy keeps.

`Corpus` is what the refresh policy is given to embed documents with (this rank's shard, the
current passage encoder); `Retrieval` is what training, the warm-up and evaluation retrieve
through. Neither calls back into the trainer: each holds the models and data it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch

from atlas_fast.data.formats import Example, Passage
from atlas_fast.data.formatting import TextFormat
from atlas_fast.index.refresh import RefreshPolicy
from atlas_fast.models import Retriever
from atlas_fast.models.modes import eval_mode

__all__ = ["Corpus", "Retrieval"]

Autocast = Callable[[], AbstractContextManager]


class Corpus:
    """The passages, sharded over ranks by row, embedded by the retriever's current passage encoder.

    Args:
        passages: every passage; a document id is its row.
        retriever: the retriever whose passage encoder embeds them.
        autocast: returns the run's precision context.
        rank, world_size: this process's place in the torch.distributed world.
    """

    def __init__(
        self,
        passages: list[Passage],
        retriever: Retriever,
        autocast: Autocast,
        *,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.passages, self.retriever, self.autocast = passages, retriever, autocast
        self.rank, self.world_size = rank, world_size

    def owned_ids(self) -> np.ndarray:
        """(n,) int64: the document ids (corpus rows) this rank embeds, row mod world size == rank."""
        return np.arange(self.rank, len(self.passages), self.world_size, dtype=np.int64)

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """(n, d) float32 embeddings of corpus rows ``ids`` (n,) by the current passage encoder, in eval mode."""
        texts = [Retriever.passage_text(self.passages[i]) for i in ids]
        with self.autocast():
            return self.retriever.embed_passages_for_index(texts)


class Retrieval:
    """Questions -> their top-k passages: the query encoder (eval mode, no grad) over the refresh policy's index.

    Args:
        retriever: the retriever whose query encoder embeds the questions.
        refresh: the refresh policy, which serves retrieval from the index it keeps (or reranks).
        passages: every passage; the index's ids are their rows.
        text_format: the questions' query template (the reader's: Atlas encodes the same query for both).
        autocast: returns the run's precision context.
    """

    def __init__(
        self,
        retriever: Retriever,
        refresh: RefreshPolicy,
        passages: list[Passage],
        text_format: TextFormat,
        autocast: Autocast,
    ):
        self.retriever, self.refresh, self.passages = retriever, refresh, passages
        self.text_format, self.autocast = text_format, autocast

    @torch.no_grad()
    def retrieve(self, examples: list[Example], k: int, step: int | None = None) -> list[list[Passage]]:
        """The top-k passages of each example, best first (fewer where the corpus holds fewer than k).

        ``step``: the training step whose batch this is; a write-back rerank refreshes the index with the
        candidates it re-embeds (None: evaluation, which changes nothing).
        """
        with eval_mode(self.retriever):
            with self.autocast():
                query_emb = self.retriever.embed_queries(self.text_format.format_queries(examples))
            ids = self.refresh.retrieve(query_emb, k, step=step)
        return [[self.passages[i] for i in row if i >= 0] for row in ids]
