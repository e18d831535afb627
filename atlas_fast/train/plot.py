"""A PNG of a run's metrics: losses per training step, recall@k and EM per evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["plot_metrics"]


def plot_metrics(metrics_path: str | os.PathLike, image_path: str | os.PathLike) -> Path:
    """Read the metrics JSONL and draw it (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_path).read_text(encoding="utf-8").splitlines() if line]
    train = [r for r in records if r.get("split") == "train"]
    evals = [r for r in records if r.get("split") == "eval"]
    dev = [(r["step"], r["reader_loss"]) for r in records if r.get("split") == "dev"]
    figure, (losses, scores) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("reader_loss", "retriever_loss"):
        points = [(r["step"], r[key]) for r in train if r.get(key) is not None]
        if points:
            losses.plot(*zip(*points, strict=True), label=key)
    if dev:  # held-out questions: a gap to the training loss is memorisation
        losses.plot(*zip(*dev, strict=True), marker="o", label="reader_loss, dev questions")
    losses.set_xlabel("step")
    losses.set_title("training losses")
    losses.legend()
    keys = sorted({k for r in evals for k in r if k.startswith("recall@")} | ({"em"} & {k for r in evals for k in r}))
    for key in keys:
        points = [(r["step"], r[key]) for r in evals if key in r]
        scores.plot(*zip(*points, strict=True), marker="o", label=key)
    scores.set_xlabel("step")
    scores.set_title("dev metrics")
    scores.legend()
    figure.tight_layout()
    figure.savefig(image_path, dpi=100)
    plt.close(figure)
    return Path(image_path)
