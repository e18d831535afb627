"""The CPU reader warm-up recipe: cached frozen-encoder states, title-copy steps, the dev reader loss.

While the retriever is frozen (Atlas's freeze_retriever_steps) and the reader's encoder
is frozen too, an example's top-K passages and their encoder states never change. The
warm-up then trains only the decoder, over these cached states (`EncodedExamples`), for as
many epochs as it has steps: each step costs a decoder pass instead of an encoder pass over
B·K passages as well. States are stored in bfloat16, per example at its own length.

Each cached passage also keeps its own title as a target: the warm-up's title-copy steps
train the reader to write a passage's title from that passage alone, a task taken from
the corpus, with no labels, that teaches the decoder to copy from its encoder states.
`ReaderWarmup` chooses each warm-up step's batch from the cache, and measures the reader's
loss on held-out questions (the dev loss) beside the training loss. Why this recipe, and what
it gains: docs/experiments/reader-recipe.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from tqdm.auto import tqdm

from atlas_fast.data.formats import Example, Passage
from atlas_fast.models import FiDReader
from atlas_fast.models.modes import eval_mode
from atlas_fast.train.config import TrainConfig
from atlas_fast.train.joint import CachedBatch
from atlas_fast.train.metrics import passage_hits
from atlas_fast.train.setup import batch_positions

__all__ = ["EncodedExamples", "ReaderWarmup"]

Retrieve = Callable[[list[Example], int], list[list[Passage]]]


class EncodedExamples:
    """Reader encoder states (K passages each) and labels of ``examples``, encoded once.

    Args:
        reader: the reader whose (frozen) encoder makes the states.
        retrieve: (examples, k) -> the top-k passages of each example.
        examples: the examples to cache.
        n_passages: K.
        autocast: returns the run's precision context.
    """

    def __init__(
        self,
        reader: FiDReader,
        retrieve: Retrieve,
        examples: list[Example],
        n_passages: int,
        autocast: Callable[[], AbstractContextManager],
        batch_size: int = 32,
        progress: bool = False,
    ):
        K = self.n_passages = n_passages
        self.states: list[torch.Tensor] = []  # each (K, L_i, H) bfloat16
        self.masks: list[torch.Tensor] = []  # each (K, L_i) bool
        self.labels: list[torch.Tensor] = []  # each (T_i,)
        self.title_labels: list[torch.Tensor] = []  # each (K, T'_i): every passage's title as a target, -100 = padding
        self.answerable: list[bool] = []  # whether a passage of the example's K is a hit (gold, or holds an answer)
        normalized_text: dict[str, str] = {}
        starts = range(0, len(examples), batch_size)
        for start in tqdm(starts, desc="caching reader encoder states", disable=not progress, leave=False):
            batch = examples[start : start + batch_size]
            passages = retrieve(batch, K)
            input_ids, mask = reader.tokenize_passages(reader.text_format.format_queries(batch), passages)
            with eval_mode(reader), torch.no_grad(), autocast():
                states, _ = reader.encode(input_ids, mask)
            states = states.view(len(batch), K, input_ids.shape[2], -1)
            labels = reader.labels(batch)
            titles = reader.tokenize_targets([passage.title for row in passages for passage in row]).view(
                len(batch), K, -1
            )
            self.answerable += passage_hits(batch, passages, normalized_text).any(axis=1).tolist()
            for row in range(len(batch)):
                length = int(mask[row].sum(-1).max())
                self.states.append(states[row, :, :length].to(torch.bfloat16).clone())
                self.masks.append(mask[row, :, :length].bool().clone())
                self.labels.append(labels[row][labels[row] != -100].clone())
                width = int((titles[row] != -100).sum(-1).max())
                self.title_labels.append(titles[row, :, :width].clone())

    def __len__(self) -> int:
        return len(self.states)

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """FiD inputs of the chosen examples: states (B, K·L, H) float32, mask (B, K·L), labels (B, T)."""
        K = self.n_passages
        length = max(self.states[i].shape[1] for i in indices)
        hidden = self.states[indices[0]].shape[2]
        states = torch.zeros(len(indices), K, length, hidden)
        mask = torch.zeros(len(indices), K, length, dtype=torch.bool)
        labels = torch.full((len(indices), max(self.labels[i].numel() for i in indices)), -100, dtype=torch.long)
        for row, i in enumerate(indices):
            states[row, :, : self.states[i].shape[1]] = self.states[i].float()
            mask[row, :, : self.masks[i].shape[1]] = self.masks[i]
            labels[row, : self.labels[i].numel()] = self.labels[i]
        return states.view(len(indices), K * length, hidden), mask.view(len(indices), K * length), labels

    def passage_batch(self, pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Single passages and their titles (the title-copy task): ``pairs`` of (example, passage) positions ->
        states (B, L, H) float32, mask (B, L), labels (B, T) = each passage's own title, -100 = padding."""
        length = max(int(self.masks[i][k].sum()) for i, k in pairs)
        hidden = self.states[pairs[0][0]].shape[2]
        width = max(int((self.title_labels[i][k] != -100).sum()) for i, k in pairs)
        states = torch.zeros(len(pairs), length, hidden)
        mask = torch.zeros(len(pairs), length, dtype=torch.bool)
        labels = torch.full((len(pairs), width), -100, dtype=torch.long)
        for row, (i, k) in enumerate(pairs):
            n = int(self.masks[i][k].sum())  # padding is at the end: a passage's tokens come first
            states[row, :n] = self.states[i][k, :n].float()
            mask[row, :n] = True
            title = self.title_labels[i][k]
            title = title[title != -100]
            labels[row, : title.numel()] = title
        return states, mask, labels


class ReaderWarmup:
    """The warm-up's batches over cached encoder states, and the dev reader loss.

    Args:
        config: warmup_cache_examples, reader_copy_steps, reader_copy_batch_size, warmup_answerable_only,
            batch_size, n_context, dev_loss_examples, freeze_retriever_steps, reader_train_encoder, seed.
        reader: the FiD reader.
        retrieve: (examples, k) -> the top-k passages of each example (`Retrieval.retrieve`).
        train_examples: this rank's share of the training examples (the cache's pool).
        eval_examples: the eval examples (the dev loss's first ``dev_loss_examples``).
        autocast: returns the run's precision context.
        device: where the batches go.
        gathered: the context in which the reader's full weights are present (`Trainer.gathered`: sharded
            weights are all-gathered once for a whole cache, not once per batch).
        progress: show a progress bar while caching.
    """

    def __init__(
        self,
        config: TrainConfig,
        reader: FiDReader,
        retrieve: Retrieve,
        train_examples: list[Example],
        eval_examples: list[Example],
        autocast: Callable[[], AbstractContextManager],
        device: torch.device,
        gathered: Callable[[], AbstractContextManager] = contextlib.nullcontext,
        progress: bool = False,
    ):
        self.config, self.reader, self.retrieve, self.gathered = config, reader, retrieve, gathered
        self.train_examples, self.eval_examples = train_examples, eval_examples
        self.autocast, self.device, self.progress = autocast, device, progress
        self.cache: EncodedExamples | None = None  # built on the first cached step
        self.question_examples: list[int] = []  # the cache's positions the question steps train on
        self.dev_cache: EncodedExamples | None = None  # see dev_reader_loss

    def cache_size(self) -> int:
        """Examples whose reader encoder states the warm-up caches (0: no cache, the warm-up retrieves)."""
        if self.config.reader_train_encoder or not self.config.warmup_cache_examples:
            return 0
        return min(self.config.warmup_cache_examples, len(self.train_examples))

    def batch(self, step: int, index: int) -> CachedBatch:
        """Micro-batch ``index`` of warm-up step ``step`` over the cached encoder states (built on first use).

        The first ``reader_copy_steps`` steps are the title-copy task: single cached passages, each with its
        own title as the target. The steps after it train on the questions, only on those whose K passages
        hold a hit when ``warmup_answerable_only``: a target the passages cannot give teaches the reader to
        answer from the question alone.
        """
        config, K = self.config, self.config.n_context
        if self.cache is None:
            with self.gathered():
                self.cache = EncodedExamples(
                    self.reader,
                    self.retrieve,
                    self.train_examples[: self.cache_size()],
                    K,
                    self.autocast,
                    progress=self.progress,
                )
            cache = self.cache
            self.question_examples = [
                i for i in range(len(cache)) if cache.answerable[i] or not config.warmup_answerable_only
            ] or list(range(len(cache)))  # none answerable (a tiny corpus): every example rather than none
        cache, seed = self.cache, config.seed
        if step < config.reader_copy_steps:
            chosen = batch_positions(len(cache) * K, index, config.reader_copy_batch_size, seed)
            tensors, n_passages = cache.passage_batch([divmod(pair, K) for pair in chosen]), 1
        else:
            chosen = batch_positions(len(self.question_examples), index, config.batch_size, seed)
            tensors, n_passages = cache.batch([self.question_examples[i] for i in chosen]), K
        return CachedBatch(*(t.to(self.device) for t in tensors), n_passages)

    @torch.no_grad()
    def dev_reader_loss(self, step: int, batch_size: int = 32) -> float:
        """The reader's loss (mean over target tokens) on the first ``dev_loss_examples`` eval examples over
        their top-K passages, in eval mode, at training step ``step``: next to the training loss it shows
        memorisation (a training loss that falls while this one does not).

        While the retriever and the reader's encoder are both frozen, the examples' passages and encoder
        states cannot change and are encoded once; afterwards they are encoded again at every call.
        """
        with self.gathered():
            return self._dev_reader_loss(step, batch_size)

    def _dev_reader_loss(self, step: int, batch_size: int) -> float:
        config = self.config
        frozen = not config.reader_train_encoder and step < config.freeze_retriever_steps
        if self.dev_cache is None or not frozen:
            examples = self.eval_examples[: config.dev_loss_examples]
            self.dev_cache = EncodedExamples(self.reader, self.retrieve, examples, config.n_context, self.autocast)
        cache, total, tokens = self.dev_cache, 0.0, 0
        with eval_mode(self.reader), self.autocast():
            for start in range(0, len(cache), batch_size):
                states, mask, labels = (
                    t.to(self.device) for t in cache.batch(range(start, min(start + batch_size, len(cache))))
                )
                count = int((labels != -100).sum())
                total += self.reader.loss(states, mask, labels, config.n_context).item() * count
                tokens += count
        return total / max(tokens, 1)
