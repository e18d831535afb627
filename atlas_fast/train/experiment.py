"""`atlas-fast experiment refresh`: Atlas's re-indexing claim measured at small scale.

One reader warm-up (retriever frozen, the index built once), checkpointed; then, from
that same checkpoint, the same number of joint PDist steps under each refresh policy:
"none" (documents frozen where they were embedded while the encoder moves), "full"
every N steps (Atlas), "incremental" with a per-step budget, "rerank" (over-retrieve,
re-score with the current encoder). Reported: dev recall@k as served by each policy's
index after the joint steps, the same retriever's recall over a freshly re-embedded corpus
("fresh": what it learned, staleness aside), and the documents each policy re-embedded
while training (its cost).
"""

from __future__ import annotations

import dataclasses
import json
import time

from atlas_fast.train.config import TrainConfig
from atlas_fast.train.run import format_metrics
from atlas_fast.train.trainer import Trainer

__all__ = ["POLICIES", "format_table", "refresh_experiment"]

POLICIES = ("none", "full", "incremental", "rerank")


def refresh_experiment(config: TrainConfig, joint_steps: int, policies: tuple[str, ...] = POLICIES) -> dict:
    """Warm the reader for ``config.freeze_retriever_steps`` steps, then run ``joint_steps`` under each policy."""
    warm_config = dataclasses.replace(config, refresh="none", steps=config.freeze_retriever_steps + joint_steps)
    warm = Trainer(warm_config)
    warm.build_index()
    before = warm.evaluator(generate=False)
    print("before joint training: " + format_metrics(before))
    while warm.step < config.freeze_retriever_steps:
        warm.train_step()
    checkpoint = warm.save_checkpoint()
    start = warm.evaluator(generate=False)
    results = {"before": before, "after_warmup": start, "joint_steps": joint_steps, "policies": {}}
    for policy in policies:
        run = Trainer(dataclasses.replace(warm_config, refresh=policy, output_dir=f"{config.output_dir}/{policy}"))
        run.resume(checkpoint)
        embedded_before = run.refresh.documents_embedded  # the warm-up's count, restored with the checkpoint
        clock = time.perf_counter()
        while run.step < warm_config.steps:
            run.train_step()
        seconds = time.perf_counter() - clock
        trained_reembedded = run.refresh.documents_embedded - embedded_before
        metrics = run.evaluator(generate=False)
        # The same retriever over a freshly re-embedded corpus: what it learned, staleness aside.
        run.build_index()
        fresh = {f"{key} fresh": value for key, value in run.evaluator(generate=False).items()}
        row = {**metrics, **fresh, "documents_reembedded": trained_reembedded, "seconds": seconds}
        results["policies"][policy] = row
        cost = f"{trained_reembedded} documents re-embedded, {seconds:.0f} s"
        print(f"{policy}: {format_metrics({**metrics, **fresh})}, {cost}")
    with open(f"{config.output_dir}/refresh_experiment.json", "w", encoding="utf-8") as handle:
        json.dump({"config": warm_config.to_dict(), **results}, handle, indent=1)
    return results


def format_table(results: dict) -> str:
    """A markdown table of the experiment."""
    keys = [k for k in results["after_warmup"] if k.startswith("recall@")]
    columns = keys + [f"{k} fresh" for k in keys]
    header = "| policy | " + " | ".join(columns) + " | documents re-embedded in training | training s |"
    lines = [header, "|" + "---|" * (len(columns) + 3)]
    start = " | ".join(f"{results['after_warmup'][k]:.3f}" for k in keys) + " | –" * len(keys)
    lines.append(f"| (after warm-up, before joint steps) | {start} | – | – |")
    for policy, row in results["policies"].items():
        cells = " | ".join(f"{row[k]:.3f}" for k in columns)
        lines.append(f"| {policy} | {cells} | {row['documents_reembedded']:,} | {row['seconds']:.0f} |")
    return "\n".join(lines)
