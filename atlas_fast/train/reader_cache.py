"""Frozen-encoder states of a fixed set of examples, computed once for the reader warm-up.

While the retriever is frozen (Atlas's freeze_retriever_steps) and the reader's encoder
is frozen too, an example's top-K passages and their encoder states never change. The
warm-up then trains only the decoder, over these cached states, for as many epochs as
it has steps: each step costs a decoder pass instead of an encoder pass over B·K
passages as well. States are stored in bfloat16, per example at its own length.

Each cached passage also keeps its own title as a target: the warm-up's title-copy steps
train the reader to write a passage's title from that passage alone, a task taken from
the corpus, with no labels, that teaches the decoder to copy from its encoder states.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from tqdm.auto import tqdm

from atlas_fast.data.formats import Example, Passage
from atlas_fast.models import FiDReader
from atlas_fast.models.modes import eval_mode
from atlas_fast.train.metrics import passage_hits

__all__ = ["EncodedExamples"]


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
        retrieve: Callable[[list[Example], int], list[list[Passage]]],
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
            input_ids, mask = reader.tokenize_passages(reader.queries(batch), passages)
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
