"""Evaluation of a run: retrieval recall@k, the reader's answers (EM/F1), the reader as a teacher, two controls.

- recall@k: the gold passage in the top k where the example names it, else a passage
  containing a gold answer;
- teacher@1: among examples whose top-K holds a hit, how often the reader's PDist
  score ranks a hit first (next to the retriever's own top-1 on the same examples);
- EM/F1 of greedy answers over the top-K passages, beside two controls: "copy the
  title of the top-1 passage" and the reader given another question's passages
  (what the reader gets from the passages rather than from the question alone).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch
from tqdm.auto import tqdm

from atlas_fast.data.formats import Example, Passage
from atlas_fast.models import FiDReader
from atlas_fast.models.modes import eval_mode
from atlas_fast.train.metrics import exact_match, f1_score, passage_hits, recall_at
from atlas_fast.train.setup import collective_device

__all__ = ["Evaluator"]


class Evaluator:
    """Metrics of a run's models on its eval examples (each rank its share; the result is the whole set's).

    Args:
        reader: the FiD reader.
        retrieve: (examples, k) -> the top-k passages of each example, as training retrieves them.
        examples: every eval example (all ranks pass the same list).
        eval_k: the k of recall@k.
        n_context: K, passages the reader reads.
        generate_examples: how many examples the reader answers (the first ones).
        autocast: returns the run's precision context.
        gathered: the context in which the models' full weights are present (`Trainer.gathered`: sharded
            weights are all-gathered once per evaluation).
        rank, world_size: this process's place in the torch.distributed world.
        progress: show progress bars (rank 0).
    """

    def __init__(
        self,
        reader: FiDReader,
        retrieve: Callable[[list[Example], int], list[list[Passage]]],
        examples: list[Example],
        *,
        eval_k: tuple[int, ...],
        n_context: int,
        generate_examples: int,
        autocast: Callable[[], AbstractContextManager],
        gathered: Callable[[], AbstractContextManager] = contextlib.nullcontext,
        rank: int = 0,
        world_size: int = 1,
        progress: bool = False,
    ):
        self.reader, self.retrieve, self.examples = reader, retrieve, examples
        self.eval_k, self.n_context, self.generate_examples = eval_k, n_context, generate_examples
        self.autocast, self.gathered = autocast, gathered
        self.rank, self.world_size = rank, world_size
        self.progress = progress and rank == 0
        self.normalized_text: dict[str, str] = {}  # passage id -> normalised text, for answer-containment hits

    def __call__(self, generate: bool = True, batch_size: int = 32) -> dict:
        """recall@k and, with ``generate``, the reader's answers, its teacher@1 and the two controls."""
        with self.gathered():
            return self._metrics(generate, batch_size)

    def _metrics(self, generate: bool, batch_size: int) -> dict:
        # Every rank must make the same number of (collective) searches: equal shares, the remainder dropped.
        usable = len(self.examples) // self.world_size * self.world_size
        examples = self.examples[:usable][self.rank :: self.world_size]
        depth = max(max(self.eval_k), self.n_context)
        hits, retrieved = [], []
        batches = range(0, len(examples), batch_size)
        for start in tqdm(batches, desc="evaluating retrieval", disable=not self.progress, leave=False):
            batch = examples[start : start + batch_size]
            passages = self.retrieve(batch, depth)
            retrieved += passages
            hits.append(passage_hits(batch, passages, self.normalized_text))
        hits = np.concatenate(hits) if hits else np.zeros((0, depth), dtype=bool)
        metrics = {f"recall@{k}": recall_at(hits, k) for k in self.eval_k}
        if generate:
            metrics.update(self._reader_metrics(examples, retrieved, hits, batch_size))
        if self.world_size > 1:
            metrics = _combine_over_ranks(metrics, len(examples))
        return metrics

    @torch.no_grad()
    def _reader_metrics(self, examples, retrieved, hits, batch_size: int) -> dict:
        reader, K = self.reader, self.n_context
        n = min(len(examples), self.generate_examples)
        answered = {"em": [], "f1": [], "em_other_passages": [], "em_top1_title": []}
        teacher_first, retriever_first = [], []
        with eval_mode(reader):
            for start in tqdm(
                range(0, n, batch_size), desc="evaluating reader", disable=not self.progress, leave=False
            ):
                batch = examples[start : min(n, start + batch_size)]
                passages = [row[:K] for row in retrieved[start : start + len(batch)]]
                with self.autocast():
                    queries = reader.text_format.format_queries(batch)
                    states, mask = reader.encode(*reader.tokenize_passages(queries, passages))
                    predictions = reader.generate(states, mask, K)
                    # The control: each question with the passages of the next question in the batch.
                    other = reader.generate(states.roll(1, 0), mask.roll(1, 0), K) if len(batch) > 1 else predictions
                    gold = reader.gold_scores("pdist", states, mask, reader.labels(batch), K)
                batch_hits = hits[start : start + len(batch), :K]
                for row, example in enumerate(batch):
                    answered["em"].append(exact_match(predictions[row], example.answers))
                    answered["f1"].append(f1_score(predictions[row], example.answers))
                    answered["em_other_passages"].append(exact_match(other[row], example.answers))
                    answered["em_top1_title"].append(exact_match(passages[row][0].title, example.answers))
                    if batch_hits[row].any():
                        teacher_first.append(bool(batch_hits[row, int(gold[row].argmax())]))
                        retriever_first.append(bool(batch_hits[row, 0]))
        metrics = {key: float(np.mean(values)) if values else 0.0 for key, values in answered.items()}
        metrics["teacher@1"] = float(np.mean(teacher_first)) if teacher_first else 0.0
        metrics["retriever@1_same_examples"] = float(np.mean(retriever_first)) if retriever_first else 0.0
        metrics["teacher_examples"] = len(teacher_first)
        metrics["generated"] = n
        return metrics


def _combine_over_ranks(metrics: dict, examples: int) -> dict:
    """Every rank's metrics -> the whole eval set's: means weighted by how many examples each rank's
    mean is over, counts summed."""
    import torch.distributed as dist

    generated, teacher = metrics.get("generated", 0), metrics.get("teacher_examples", 0)
    weights = {key: examples for key in metrics if key.startswith("recall@")}
    weights |= {key: generated for key in ("em", "f1", "em_other_passages", "em_top1_title") if key in metrics}
    weights |= {key: teacher for key in ("teacher@1", "retriever@1_same_examples") if key in metrics}
    keys = sorted(metrics)
    sums = torch.tensor(
        [metrics[k] * weights.get(k, 1) for k in keys] + [weights.get(k, 1) for k in keys],
        dtype=torch.float64,
        device=collective_device(),
    )
    dist.all_reduce(sums)
    combined = {}
    for i, key in enumerate(keys):
        total, weight = sums[i].item(), sums[len(keys) + i].item()
        combined[key] = (total / weight if weight else 0.0) if key in weights else int(total)
    return combined
