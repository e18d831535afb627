"""`atlas-fast experiment refresh-ceiling`: the most a drift corrector could win back of what staleness costs.

From a warm-up checkpoint, every document is embedded (the stale rows); ``joint_steps`` joint steps train
with the index left alone (as full refresh does until its one refresh, at the last step); every document is
embedded again (the fresh rows). The dev questions are then served, by the trained query encoder, from
indexes in between:
- "none" and "full": every row stale, every row fresh (the two ends);
- "fresh F random" / "fresh F hot": a fraction F of the rows fresh (random documents, or the most retrieved
  while training), the rest stale: what an incremental refresh of that budget re-embeds;
- "+linear ridge R": the stale rest mapped by the linear corrector (`corrector.fit_map`) fitted on the fresh
  documents' (stale, fresh) pairs. Every pair is at the final encoder, as no incremental policy's pairs can be,
  so this bounds what a linear corrector fitted on that many pairs can do;
- "+mlp": the same with a residual two-layer MLP fitted on the pairs (a corrector network, Monath et al., ICML
  2024);
- ": query-side instead": every row stale, each query mapped into the stale rows' space by the linear map
  fitted on the same pairs from fresh to stale (Drift-Adapter, EMNLP 2025).
Each correction also reports ``cosine``: the mean cosine between the rows it corrected and their fresh
embeddings (1 would be a full refresh's rows).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from atlas_fast.experiments.refresh import check_output_dir, warm_start, write_result
from atlas_fast.index.corrector import fit_map
from atlas_fast.train.config import ConfigError, TrainConfig
from atlas_fast.train.trainer import Trainer

__all__ = ["RIDGES", "ceiling_of_correction", "fit_mlp_corrector", "format_ceiling"]

RESULT_FILE = "refresh_ceiling.json"
RIDGES = (1.0, 0.1, 0.01)  # the linear corrector's ridge, relative to the pairs' mean square (`fit_map`)


def ceiling_of_correction(
    config: TrainConfig, joint_steps: int, fractions: tuple[float, ...] = (0.25,), warm_checkpoint: str | None = None
) -> dict:
    """Served dev recall@k of each index between stale and fresh (module docstring), after ``joint_steps`` joint
    steps from the experiment's warm-up (`refresh.warm_start`); also written to output_dir/refresh_ceiling.json.

    ``config`` is run with its own index settings (``index_normalize``) and no refresh while training; every
    fraction of ``fractions`` is served from the same two embeddings.

    Raises:
        ConfigError: a fraction outside (0, 1), or an output_dir `refresh.check_output_dir` refuses.
    """
    for fraction in fractions:
        if not 0 < fraction < 1:
            raise ConfigError(f"fractions must be between 0 and 1 (shares of documents re-embedded); got {fraction!r}")
    check_output_dir(config, RESULT_FILE, warm_checkpoint)
    warm, _, checkpoint = warm_start(config, joint_steps, warm_checkpoint)
    run = Trainer(dataclasses.replace(config, steps=warm.config.steps, refresh="none", refresh_corrector="none"))
    run.resume(checkpoint)
    ids = np.sort(run.index.ids())
    stale = run.refresh.as_stored(run.corpus.embed(ids))
    while run.step < warm.config.steps:
        run.train_step()
    fresh = run.refresh.as_stored(run.corpus.embed(ids))
    chosen = {fraction: _chosen(run, ids, fraction) for fraction in fractions}  # by training's retrievals alone
    rows = {"none": _served(run, ids, stale), "full": _served(run, ids, fresh)}
    for fraction in fractions:
        for order, picked in chosen[fraction].items():
            rows |= _served_between(run, ids, stale, fresh, picked, f"fresh {fraction:g} {order}")
    result = {"joint_steps": joint_steps, "fractions": list(fractions), "documents": len(ids), "rows": rows}
    result["cosine_stale_fresh"] = _mean_cosine(stale, fresh)
    write_result(str(Path(config.output_dir) / RESULT_FILE), result)
    return result


def _chosen(run: Trainer, ids: np.ndarray, fraction: float) -> dict:
    """Positions in ``ids`` of the documents a refresh of ``fraction`` re-embeds: random ones, or the most
    retrieved while training."""
    count = max(1, round(fraction * len(ids)))
    position = {int(doc): row for row, doc in enumerate(ids)}
    return {
        "random": np.random.default_rng(run.config.seed).choice(len(ids), count, replace=False),
        "hot": np.array([position[int(doc)] for doc in run.index.stale_ids(count, "hot")]),
    }


def _served_between(
    run: Trainer, ids: np.ndarray, stale: np.ndarray, fresh: np.ndarray, picked: np.ndarray, label: str
) -> dict:
    """The table's rows for one set of ``picked`` fresh documents: alone, with each corrector, and query-side."""
    rest = np.setdiff1d(np.arange(len(ids)), picked)
    rows = {label: _served(run, ids, _mixed(stale, fresh, picked))}
    corrections = {f"+linear ridge {ridge:g}": _linear(stale, fresh, picked, ridge) for ridge in RIDGES}
    corrections["+mlp"] = fit_mlp_corrector(stale[picked], fresh[picked], seed=run.config.seed)
    for name, correct in corrections.items():
        corrected = run.refresh.as_stored(correct(stale).astype(np.float32))
        rows[f"{label} {name}"] = {
            **_served(run, ids, _mixed(corrected, fresh, picked)),
            "cosine": _mean_cosine(corrected[rest], fresh[rest]),
        }
    to_stale = torch.from_numpy(fit_map(fresh[picked], stale[picked], "linear", RIDGES[-1]))
    rows[f"{label}: query-side instead"] = _served(run, ids, stale, query_map=to_stale)
    return rows


def _mixed(stale: np.ndarray, fresh: np.ndarray, picked: np.ndarray) -> np.ndarray:
    rows = stale.copy()
    rows[picked] = fresh[picked]
    return rows


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(norms, np.finfo(np.float32).tiny)))


def _linear(stale: np.ndarray, fresh: np.ndarray, picked: np.ndarray, ridge: float):
    matrix = fit_map(stale[picked], fresh[picked], "linear", ridge)
    return lambda rows: rows @ matrix


def fit_mlp_corrector(old: np.ndarray, new: np.ndarray, seed: int, hidden: int = 256, epochs: int = 200):
    """A residual MLP x + W₂ gelu(W₁ x) fitted to carry ``old`` to ``new`` (mean cosine), from the identity."""
    generator = torch.Generator().manual_seed(seed)
    dim = old.shape[1]
    net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim))
    torch.nn.init.zeros_(net[2].weight)
    torch.nn.init.zeros_(net[2].bias)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    x, y = torch.from_numpy(old), torch.from_numpy(new)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(256):
            loss = 1 - torch.nn.functional.cosine_similarity(x[batch] + net(x[batch]), y[batch]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    @torch.no_grad()
    def correct(rows: np.ndarray) -> np.ndarray:
        rows = torch.from_numpy(rows)
        return (rows + net(rows)).numpy()

    return correct


def _served(run: Trainer, ids: np.ndarray, rows: np.ndarray, query_map: torch.Tensor | None = None) -> dict:
    """recall@k of the dev questions served from ``rows`` (queries times ``query_map`` when given)."""
    run.index.upsert(ids, rows, step=run.step)
    policy = run.refresh
    if query_map is None:
        return _recalls(run.evaluator(generate=False))
    original = policy.retrieve
    policy.retrieve = lambda query_emb, k, step=None: original(query_emb.float() @ query_map, k, step)
    try:
        return _recalls(run.evaluator(generate=False))
    finally:
        del policy.retrieve  # the class's method again


def _recalls(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key.startswith("recall@")}


def format_ceiling(result: dict) -> str:
    """Markdown: one row per served index."""
    recalls = [key for key in result["rows"]["none"] if key.startswith("recall@")]
    lines = [
        f"{result['joint_steps']} joint steps, {result['documents']} documents re-embedded in part: "
        f"{', '.join(f'{f:g}' for f in result['fractions'])}; "
        f"stale·fresh cosine {result['cosine_stale_fresh']:.4f}.",
        "",
        "| index | " + " | ".join(recalls) + " | corrected rows · fresh cosine |",
        "|---|" + "---|" * (len(recalls) + 1),
    ]
    for name, row in result["rows"].items():
        cosine = f"{row['cosine']:.4f}" if "cosine" in row else "–"
        lines.append(f"| {name} | " + " | ".join(f"{row[key]:.3f}" for key in recalls) + f" | {cosine} |")
    return "\n".join(lines)
