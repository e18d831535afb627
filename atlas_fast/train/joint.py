"""The models one data-parallel replica trains, with one micro-batch's losses as its `forward`.

Everything that needs gradients in a step (the retriever's re-embedding, the reader's FiD
pass) runs inside `JointModel.forward`, so that DistributedDataParallel, which wraps this
module when the world has more than one rank, sees every differentiable call through its
forward and reduces the gradients of both models in its buckets during backward; under
``parallel = "fsdp"`` the module is FSDP's root, whose forward gathers what the blocks do not
hold. Retrieval and the index refresh need no gradients and stay outside.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from atlas_fast import losses
from atlas_fast.models import FiDReader, Retriever
from atlas_fast.models.modes import eval_mode, set_training
from atlas_fast.train.config import TrainConfig
from atlas_fast.train.phases import PhaseTimer

__all__ = ["CachedBatch", "JointModel", "RetrievedBatch"]


@dataclasses.dataclass
class RetrievedBatch:
    """A micro-batch of B questions with their K retrieved passages each.

    Tensors only, tokenised before `JointModel.forward`, so that torch.compile traces the forward whole.

    Attributes:
        query_ids, query_mask: (B, Lq) the retriever's tokenised queries.
        passage_ids, passage_ids_mask: (B·K, Lp) the retriever's tokenised passages, K per query, in retrieval
            order.
        input_ids, passage_mask: (B, K, L) the reader's tokenised passages.
        labels: (B, T) reader targets, -100 = padding.
    """

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    passage_ids: torch.Tensor
    passage_ids_mask: torch.Tensor
    input_ids: torch.Tensor
    passage_mask: torch.Tensor
    labels: torch.Tensor


@dataclasses.dataclass
class CachedBatch:
    """A warm-up micro-batch over cached frozen-encoder states: states (B, K·L, H), mask (B, K·L), labels (B, T),
    with K = n_passages (1 for the title-copy task)."""

    states: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    n_passages: int


class JointModel(nn.Module):
    """Retriever and reader; ``forward`` = one micro-batch's (reader loss, retriever loss or None).

    Args:
        retriever, reader: the models (their parameters are this module's).
        config: n_context, gold_score_mode, temperatures and reader_train_encoder are read from it.
        autocast: returns the precision context of the run's device.
        timer: the trainer's phase timer ("reembed", "gold", "reader" are timed here).
    """

    def __init__(
        self,
        retriever: Retriever,
        reader: FiDReader,
        config: TrainConfig,
        autocast: Callable[[], AbstractContextManager],
        timer: PhaseTimer,
    ):
        super().__init__()
        self.retriever, self.reader = retriever, reader
        self.config = config
        self.autocast = autocast
        self.timer = timer

    def forward(
        self, batch: RetrievedBatch | CachedBatch, train_retriever: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reader loss (token mean) and, when ``train_retriever``, the retriever loss against the gold scores."""
        if isinstance(batch, CachedBatch):
            with self.timer("reader"), self.autocast():
                return self.reader.loss(batch.states, batch.mask, batch.labels, batch.n_passages), None
        config, K = self.config, self.config.n_context
        retriever_loss = None
        with self.autocast():
            if train_retriever:
                with self.timer("reembed"):
                    query_emb = self.retriever.embed_query_tokens(batch.query_ids, batch.query_mask)
                    passage_emb = self.retriever.embed_passage_tokens(batch.passage_ids, batch.passage_ids_mask)
                    scores = losses.retriever_scores(query_emb, passage_emb.view(query_emb.shape[0], K, -1))
            # A frozen reader encoder is run once, in eval mode, for both the gold scores and the FiD pass.
            frozen_encoder = not config.reader_train_encoder
            with self.timer("reader"), torch.no_grad() if frozen_encoder else contextlib.nullcontext():
                set_training(self.reader.model.encoder, not frozen_encoder)
                states, flat_mask = self.reader.encode(batch.input_ids, batch.passage_mask)
            if train_retriever:
                with self.timer("gold"):
                    gold_states = states if frozen_encoder else self._eval_encoder_states(batch)
                    retriever_loss = self.reader.retriever_loss(
                        config.gold_score_mode,
                        scores,
                        gold_states.detach(),
                        flat_mask,
                        batch.labels,
                        temperature_score=config.temperature_score,
                        temperature_gold=config.temperature_gold,
                    )
            with self.timer("reader"):
                reader_loss = self.reader.loss(states, flat_mask, batch.labels, K)
        return reader_loss, retriever_loss

    @torch.no_grad()
    def _eval_encoder_states(self, batch: RetrievedBatch) -> torch.Tensor:
        with eval_mode(self.reader):
            return self.reader.encode(batch.input_ids, batch.passage_mask)[0]
