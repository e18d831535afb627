"""Recall@100 of int8 (and bf16) rows against exact float32 on the default run's real embeddings.

    python benchmarks/int8_recall_minilm.py            # prints JSON; docs/experiments/int8-index.md quotes it

The bundled corpus (10,033 Wikipedia lead sections, `atlas-fast data prepare`) embedded by the packaged
MiniLM retriever, unit rows as the default run's index holds them (index_normalize), queried with the
questions of both bundled dev sets (wiki-describe and wiki-qa) embedded the same way.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from atlas_fast.index import DocumentIndex
from atlas_fast.models import Retriever
from atlas_fast.models.retriever import packaged_minilm_path
from atlas_fast.train.config import TrainConfig
from atlas_fast.train.setup import load_data

K = 100


def main() -> None:
    passages, _, describe = load_data(TrainConfig(task="wiki-describe"))
    _, _, qa = load_data(TrainConfig(task="wiki-qa"))
    retriever = Retriever.from_pretrained(packaged_minilm_path()).eval()
    rows = retriever.embed_passages_for_index([Retriever.passage_text(p) for p in passages])
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    with torch.no_grad():
        queries = retriever.embed_queries([e.question for e in describe + qa]).float().numpy()
    ids = np.arange(len(rows))
    exact = DocumentIndex(rows.shape[1])
    exact.upsert(ids, rows)
    _, want = exact.search(queries, K)
    result = {"passages": len(rows), "queries": len(queries), "dim": rows.shape[1], "k": K}
    for dtype in ("bfloat16", "int8"):
        index = DocumentIndex(rows.shape[1], dtype)
        index.upsert(ids, rows)
        _, found = index.search(queries, K)
        recall = [np.isin(found[q], want[q]).mean() for q in range(len(queries))]
        result[dtype] = {"recall_mean": float(np.mean(recall)), "recall_min": float(np.min(recall))}
        result[dtype]["top1_agrees"] = float(np.mean(found[:, 0] == want[:, 0]))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
