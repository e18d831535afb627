"""`atlas-fast experiment refresh-diagnosis`: why a mixed-version index serves worse than a stale one.

From a warm-up checkpoint, run the joint steps under one refresh policy and probe the index every
``probe_every`` steps. Rows are grouped by their age (steps since the encoder version that embedded
them; "warm-up" for rows of the initial build). Each probe reports, per group:
- ``rows`` and ``norm``: how many rows, and their mean L2 norm;
- ``score``: the mean inner product of the dev queries with the group's rows (what a row of that
  version scores against an arbitrary query);
- ``top10_share`` against ``rows_share``: the share of the dev queries' top-10 that the group takes,
  next to its share of the index (crowding: a ratio above 1 means the group wins more than its size);
and over the whole index:
- ``drift``: the mean cosine between the old and the new vector of the documents overwritten since the
  previous probe (`Index.drift`);
- ``same_documents``: a fixed sample of documents re-embedded by the current encoder next to their
  stored rows: mean norm of each, the mean score each gets from the dev queries, and their cosine;
- ``gold_rank``: the median rank of the dev questions' gold passages among all rows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from atlas_fast.experiments.refresh import check_output_dir, warm_start, write_result
from atlas_fast.models.modes import eval_mode
from atlas_fast.train.config import ConfigError, TrainConfig
from atlas_fast.train.trainer import Trainer

__all__ = ["AGE_GROUPS", "diagnose_refresh", "format_diagnosis"]

# Upper bounds (exclusive) of the age groups, in steps; rows of the initial build are "warm-up".
AGE_GROUPS = (5, 10, 25, 50, 100)
SAMPLE_DOCUMENTS = 512
RESULT_FILE = "refresh_diagnosis.json"


def diagnose_refresh(
    config: TrainConfig, joint_steps: int, probe_every: int = 10, warm_checkpoint: str | None = None
) -> dict:
    """Probe records of ``joint_steps`` joint steps under ``config``'s refresh policy, after the experiment's
    warm-up (`experiment.warm_start`: run now, or restored from ``warm_checkpoint``), probed every
    ``probe_every`` steps and after the last; also written to ``config.output_dir``/refresh_diagnosis.json.

    Raises:
        ConfigError: a bad count, or an output_dir that holds checkpoints (without ``warm_checkpoint``) or an
            earlier diagnosis (`experiment.check_output_dir`), before any work.
    """
    if isinstance(probe_every, bool) or not isinstance(probe_every, int) or probe_every < 1:
        raise ConfigError(f"probe_every must be an integer ≥ 1; got {probe_every!r}")
    check_output_dir(config, RESULT_FILE, warm_checkpoint)
    warm, _, checkpoint = warm_start(config, joint_steps, warm_checkpoint)
    run = Trainer(dataclasses.replace(config, steps=warm.config.steps))
    run.resume(checkpoint)
    start = run.step
    chosen = np.random.default_rng(0).choice(
        len(run.passages), size=min(SAMPLE_DOCUMENTS, len(run.passages)), replace=False
    )
    run.index.drift(reset=True)
    probes = [_probe(run, start, chosen)]
    while run.step < warm.config.steps:
        run.train_step()
        if (run.step - start) % probe_every == 0 or run.step == warm.config.steps:
            probes.append(_probe(run, start, chosen))
    result = {"policy": config.refresh, "joint_steps": joint_steps, "probes": probes}
    write_result(str(Path(config.output_dir) / RESULT_FILE), result)
    return result


def _age_group(age: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """The AGE_GROUPS label of each row: "<N" for the first bound it is under, "warm-up" for initial rows."""
    labels = np.full(age.shape, f"≥{AGE_GROUPS[-1]}", dtype=object)
    for bound in reversed(AGE_GROUPS):
        labels[age < bound] = f"<{bound}"
    labels[initial] = "warm-up"
    return labels


@torch.no_grad()
def _probe(run: Trainer, start: int, sample: np.ndarray) -> dict:
    index = run.index
    texts = run.reader.text_format.format_queries(run.eval_examples)
    with eval_mode(run.retriever), run.autocast():
        queries = torch.cat([run.retriever.embed_queries(texts[i : i + 64]) for i in range(0, len(texts), 64)]).float()
    ids = index.ids()
    rows = torch.from_numpy(index.get(ids))
    steps = index.step_of(ids)
    groups = _age_group(run.step - steps, steps <= start)
    scores = queries @ rows.T  # (Q, N)
    top10 = scores.topk(min(10, scores.shape[1]), dim=1).indices.numpy()  # a corpus may hold fewer
    top10_groups = groups[top10.reshape(-1)]
    mean_query = queries.mean(0)
    norms = rows.norm(dim=1).numpy()
    by_group = {}
    for label in sorted(set(groups), key=_group_order):
        member = groups == label
        by_group[label] = {
            "rows": int(member.sum()),
            "rows_share": float(member.mean()),
            "norm": float(norms[member].mean()),
            "score": float((rows[torch.from_numpy(member)] @ mean_query).mean()),
            "top10_share": float((top10_groups == label).mean()),
        }
    fresh = torch.from_numpy(run.corpus.embed(sample))
    stored = torch.from_numpy(index.get(sample))
    drift, overwritten = index.drift(reset=True)
    position = {doc: row for row, doc in enumerate(ids)}
    id_of = {passage.id: number for number, passage in enumerate(run.passages)}
    gold_rows = [(q, position[id_of[e.passage_id]]) for q, e in enumerate(run.eval_examples) if e.passage_id in id_of]
    ranks = [int((scores[q] > scores[q, row]).sum()) for q, row in gold_rows]
    return {
        "step": run.step - start,
        "groups": by_group,
        "drift": drift,
        "overwritten": overwritten,
        "same_documents": {
            "stored_norm": float(stored.norm(dim=1).mean()),
            "fresh_norm": float(fresh.norm(dim=1).mean()),
            "stored_score": float((stored @ mean_query).mean()),
            "fresh_score": float((fresh @ mean_query).mean()),
            "cosine": float(torch.nn.functional.cosine_similarity(stored, fresh, dim=1).mean()),
        },
        "gold_rank_median": float(np.median(ranks)) if ranks else None,
    }


def _group_order(label: str) -> int:
    return -1 if label == "warm-up" else int(label.lstrip("<≥")) + (label[0] == "≥")


def _by_group(groups: dict, key: str, digits: int = 3) -> str:
    return ", ".join(f"{label}: {row[key]:.{digits}f}" for label, row in groups.items())


def format_diagnosis(result: dict) -> str:
    """Markdown: one table of the age groups at each probe, one of the whole-index numbers."""
    lines = [
        f"Policy {result['policy']}, {result['joint_steps']} joint steps.",
        "",
        "| step | rows by age | norm by age | mean score by age | top-10 share / index share by age |",
        "|---|---|---|---|---|",
    ]
    for probe in result["probes"]:
        groups = probe["groups"]
        rows = ", ".join(f"{label}: {row['rows']}" for label, row in groups.items())
        shares = ", ".join(
            f"{label}: {row['top10_share']:.3f}/{row['rows_share']:.3f}" for label, row in groups.items()
        )
        norms, scores = _by_group(groups, "norm"), _by_group(groups, "score")
        lines.append(f"| {probe['step']} | {rows} | {norms} | {scores} | {shares} |")
    lines += [
        "",
        "| step | drift: cosine (rows overwritten) | same documents' norm: stored → fresh | their mean score "
        "| stored·fresh cosine | gold passage median rank |",
        "|---|---|---|---|---|---|",
    ]
    for probe in result["probes"]:
        same = probe["same_documents"]
        norm = f"{same['stored_norm']:.3f} → {same['fresh_norm']:.3f}"
        score = f"{same['stored_score']:.3f} → {same['fresh_score']:.3f}"
        drift = f"{probe['drift']:.4f} ({probe['overwritten']})"
        lines.append(
            f"| {probe['step']} | {drift} | {norm} | {score} | {same['cosine']:.4f} | {probe['gold_rank_median']} |"
        )
    return "\n".join(lines)
