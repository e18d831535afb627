"""Answer metrics (EM, F1 with SQuAD normalisation) and retrieval hits for recall@k."""

from __future__ import annotations

from collections import Counter

import numpy as np

from atlas_fast.data.formats import Example, Passage
from atlas_fast.data.normalize import normalize_answer

__all__ = ["exact_match", "f1_score", "passage_hits", "recall_at"]


def exact_match(prediction: str, answers: tuple[str, ...] | list[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer (max over answers)."""
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(answer) for answer in answers))


def _f1(prediction: str, answer: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: tuple[str, ...] | list[str]) -> float:
    """SQuAD token F1, max over gold answers."""
    return max(_f1(prediction, answer) for answer in answers)


def passage_hits(
    examples: list[Example], retrieved: list[list[Passage]], normalized_text: dict[str, str]
) -> np.ndarray:
    """(B, k) bool: whether each retrieved passage is a hit for its example.

    A hit is the gold passage where the example names one, else a passage whose normalised
    ``title text`` contains a normalised gold answer. ``normalized_text`` caches that text per passage id.
    """
    hits = np.zeros((len(examples), max((len(row) for row in retrieved), default=0)), dtype=bool)
    for row, (example, passages) in enumerate(zip(examples, retrieved, strict=True)):
        answers = [f" {normalize_answer(a)} " for a in example.answers if normalize_answer(a)]
        for column, passage in enumerate(passages):
            if example.passage_id is not None:
                hits[row, column] = passage.id == example.passage_id
            else:
                if passage.id not in normalized_text:
                    normalized_text[passage.id] = f" {normalize_answer(f'{passage.title} {passage.text}')} "
                hits[row, column] = any(answer in normalized_text[passage.id] for answer in answers)
    return hits


def recall_at(hits: np.ndarray, k: int) -> float:
    """Fraction of rows with a hit among their first k passages."""
    return float(hits[:, :k].any(axis=1).mean()) if len(hits) else 0.0
