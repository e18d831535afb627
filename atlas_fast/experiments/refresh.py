"""`atlas-fast experiment refresh`: Atlas's re-indexing claim measured at small scale.

One reader warm-up (retriever frozen, the index built once), checkpointed; then, from
that same checkpoint, the same number of joint PDist steps under each refresh policy:
"none" (documents frozen where they were embedded while the encoder moves), "full"
every N steps (Atlas), "incremental" with a per-step budget, "rerank" (over-retrieve,
re-score with the current encoder), "query-side" (the passage encoder frozen), and the remedies
named POLICY+OPTION: "+normalized" (unit-norm rows, retrieval by cosine), "+scale", "+linear" or
"+procrustes" (a drift corrector after each incremental refresh), "+accumulated" (the corrector
fitted on every pair re-embedded so far, not one step's), "+hot" (re-embed the most
retrieved first), "+write-back" (rerank's fresh candidate embeddings upserted while training),
"+every=N", "+budget=N", "+candidates=N". Reported: dev recall@k as served by each policy's
index after the joint steps, the same retriever's recall over a freshly re-embedded corpus
("fresh": what it learned, staleness aside), and the documents each policy re-embedded
while training (its cost).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from atlas_fast.index.corrector import CORRECTORS
from atlas_fast.train import checkpoint
from atlas_fast.train.config import ConfigError, TrainConfig
from atlas_fast.train.run import format_metrics
from atlas_fast.train.trainer import Trainer

__all__ = [
    "EXPERIMENT_POLICIES",
    "check_output_dir",
    "format_table",
    "plot_results",
    "policy_config",
    "refresh_experiment",
    "warm_start",
    "write_result",
]

RESULT_FILE = "refresh_experiment.json"
EXPERIMENT_POLICIES = ("none", "full", "incremental", "rerank", "incremental+procrustes", "rerank+write-back")
# What each +OPTION of a policy name sets.
OPTIONS = {
    **{corrector: {"refresh_corrector": corrector} for corrector in CORRECTORS if corrector != "none"},
    "write-back": {"rerank_write_back": True},
    "normalized": {"index_normalize": True},
    "hot": {"refresh_order": "hot"},
    "accumulated": {"corrector_fit": "accumulated"},
}


# What each +KEY=N option of a policy name sets.
NUMERIC_OPTIONS = {"every": "refresh_every", "budget": "refresh_budget", "candidates": "rerank_candidates"}


def policy_config(config: TrainConfig, name: str) -> TrainConfig:
    """``config`` under the policy ``name`` = POLICY[+OPTION...], e.g. "incremental+budget=100+procrustes".

    A name without "+normalized" is served by a dot-product index (Atlas), whatever ``config`` says.
    """
    policy, *options = name.split("+")
    settings = {"refresh": policy, "index_normalize": False}  # a plain name is Atlas's dot product
    if policy == "query-side":  # a frozen passage encoder of its own, starting from the shared weights
        settings["untied_retriever"] = True
    for option in options:
        key, _, value = option.partition("=")
        if option in OPTIONS:
            settings |= OPTIONS[option]
        elif key in NUMERIC_OPTIONS and value.isdigit():
            settings[NUMERIC_OPTIONS[key]] = int(value)
        else:
            known = [*OPTIONS, *(f"{key}=N" for key in NUMERIC_OPTIONS)]
            raise ConfigError(f"policy {name!r}: unknown option {option!r} (known: {', '.join(known)})")
    try:
        return TrainConfig.from_mapping({**config.to_dict(), **settings})
    except ConfigError as error:
        raise ConfigError(f"policy {name!r}: {error}") from None


def check_output_dir(config: TrainConfig, result_file: str, warm_checkpoint: str | None) -> None:
    """Refuse, before any work, an output_dir where an experiment would lose what is there.

    Without ``warm_checkpoint`` the warm-up is saved into ``config.output_dir``: a folder holding checkpoints
    (a training run, an earlier experiment's warm-up) is refused, as `atlas-fast train` refuses it. A result
    file of an earlier experiment there is refused unless the caller merges into it (see `refresh_experiment`).
    """
    existing = checkpoint.checkpoints(config.output_dir)
    if existing and warm_checkpoint is None:
        raise ConfigError(
            f"output_dir {config.output_dir} already holds checkpoints (newest {existing[-1].name}); the experiment's "
            "warm-up would be saved among them: choose another output_dir, or pass --warm-checkpoint to start from "
            "an earlier warm-up"
        )
    if result_file and os.path.exists(os.path.join(config.output_dir, result_file)):
        raise ConfigError(
            f"output_dir {config.output_dir} already holds {result_file} of an earlier experiment: choose another "
            "output_dir (or move the file away)"
        )


KINDS = {"none": "none", "full": "full", "incremental": "incremental", "rerank": "rerank", "query-side": "query-side"}


def refresh_experiment(
    config: TrainConfig,
    joint_steps: int,
    policies: tuple[str, ...] = EXPERIMENT_POLICIES,
    seeds: tuple[int, ...] = (0, 1, 2),
    other_task: str | None = "wiki-qa",
    warm_checkpoint: str | None = None,
) -> dict:
    """Warm the reader for ``config.freeze_retriever_steps`` steps, then run ``joint_steps`` under each policy,
    once per seed (the seed orders the joint steps' batches), all from the one warm-up checkpoint.

    ``other_task``: a second bundled task whose dev recall@5 is measured before the joint steps and after
    each run (does training on ``config.task`` specialise the retriever?); None skips it.
    ``warm_checkpoint``: a warm-up checkpoint of an earlier experiment with the same configuration to start
    from, instead of warming up again (so further policies or seeds join the same shared warm-up): the
    policies of an earlier result in ``config.output_dir`` from that warm-up, with the same joint steps and
    seeds, are kept beside the new ones (a policy run again is replaced).
    """
    if not policies or len(set(policies)) != len(policies):
        raise ConfigError(f"policies must be distinct names, at least one; got {list(policies)}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct integers, at least one; got {list(seeds)}")
    if other_task and config.passages:
        raise ConfigError(
            f"other_task {other_task!r} asks about the bundled corpus, not passages = {config.passages}: "
            "pass other_task None (--other-task none)"
        )
    joint_config = dataclasses.replace(config, steps=_warm_config(config, joint_steps).steps)
    for policy in policies:  # every name and its settings, before an hour of warm-up and earlier policies
        policy_config(joint_config, policy)
    result_path = os.path.join(config.output_dir, RESULT_FILE)
    earlier = None
    if warm_checkpoint is not None and os.path.exists(result_path):
        earlier = _mergeable_result(result_path, joint_config, joint_steps, seeds, other_task)
    check_output_dir(config, "" if earlier else RESULT_FILE, warm_checkpoint)
    warm, before, checkpoint_path = warm_start(config, joint_steps, warm_checkpoint)
    start = warm.evaluator(generate=False)
    results = {"before": before, "after_warmup": start, "joint_steps": joint_steps, "seeds": list(seeds)}
    if other_task:
        results["other_task"] = other_task
        results["after_warmup"][f"{other_task} recall@5"] = _other_task_recall(warm, other_task)
    results["policies"] = {}
    if earlier:
        if earlier["after_warmup"] != start:
            raise ConfigError(
                f"{result_path} was measured from another warm-up (its recall after the warm-up differs from "
                f"{warm_checkpoint}'s): choose another output_dir"
            )
        results["before"], results["policies"] = earlier["before"], earlier["policies"]
    for policy in policies:
        runs = []
        for seed in seeds:
            settings = dict(seed=config.seed + seed, output_dir=f"{config.output_dir}/{policy}/seed-{seed}")
            run = Trainer(dataclasses.replace(policy_config(joint_config, policy), **settings))
            run.resume(checkpoint_path)
            embedded_before = run.refresh.documents_embedded  # the warm-up's count, restored with the checkpoint
            clock = time.perf_counter()
            while run.step < joint_config.steps:
                run.train_step()
            seconds = time.perf_counter() - clock
            # The cost of training only: a rerank policy's evaluation re-embeds candidates too.
            reembedded = run.refresh.documents_embedded - embedded_before
            row = {**run.evaluator(generate=False), "seconds": seconds, "documents_reembedded": reembedded}
            if other_task:
                row[f"{other_task} recall@5"] = _other_task_recall(run, other_task)
            # The same retriever over a freshly re-embedded corpus: what it learned, staleness aside (an index
            # that is fresh already, after a last full refresh or under a frozen passage encoder, serves it).
            if not _is_fresh(run):
                run.build_index()
            row |= {f"{key} fresh": value for key, value in run.evaluator(generate=False).items()}
            runs.append(row)
            print(f"{policy} seed {seed}: {format_metrics(row)}")
        results["policies"][policy] = _summary(policy, runs)
        # Written after every policy: an interrupted experiment keeps the policies it finished.
        write_result(result_path, {"config": joint_config.to_dict(), **results})
    return results


def write_result(path: str, result: dict) -> None:
    """Write ``result`` as JSON at ``path`` through a temporary file: an interruption leaves the previous file."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    os.replace(temporary, path)


def _mergeable_result(
    path: str, config: TrainConfig, joint_steps: int, seeds: tuple[int, ...], other_task: str | None
) -> dict:
    """The result an earlier experiment wrote at ``path``, when this experiment's rows may join it: the same
    configuration, joint steps, seeds and other task. Anything else is refused (ConfigError): its rows would
    be reported under a configuration they were not run with, or replaced."""
    try:
        with open(path, encoding="utf-8") as handle:
            earlier = json.load(handle)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: unreadable ({error}); move it away or choose another output_dir") from None
    required = ("config", "after_warmup", "joint_steps", "seeds", "before", "policies")
    if not isinstance(earlier, dict) or not all(key in earlier for key in required):
        raise ConfigError(f"{path}: not a refresh experiment's result; move it away or choose another output_dir")
    ours = config.to_dict()
    stored = earlier["config"] if isinstance(earlier["config"], dict) else {}
    differing = sorted(key for key in {*ours, *stored} if ours.get(key) != stored.get(key))
    ours_run = {"joint_steps": joint_steps, "seeds": list(seeds), "other_task": other_task}
    differing += [key for key, value in ours_run.items() if earlier.get(key) != value]
    if differing:
        raise ConfigError(
            f"{path} holds policies run under another configuration (differing: {', '.join(differing)}); "
            "its rows cannot share a table with these: choose another output_dir"
        )
    return earlier


def _is_fresh(run: Trainer) -> bool:
    """Whether every row of ``run``'s index is what its current passage encoder makes of the document."""
    if run.config.refresh == "query-side":
        return True
    return bool((run.index.step_of(run.index.ids()) == run.step).all())


def _warm_config(config: TrainConfig, joint_steps: int) -> TrainConfig:
    """The shared warm-up's configuration: ``config`` for the warm-up and ``joint_steps`` more, refresh "none"."""
    if isinstance(joint_steps, bool) or not isinstance(joint_steps, int) or joint_steps < 1:
        raise ConfigError(f"joint_steps must be an integer ≥ 1; got {joint_steps!r}")
    steps = config.freeze_retriever_steps + joint_steps
    # The refresh settings are each policy's (`policy_config`); the warm-up itself never refreshes.
    refresh = dict(refresh="none", index_normalize=False, refresh_corrector="none", rerank_write_back=False)
    return dataclasses.replace(config, steps=steps, **refresh)


def warm_start(config: TrainConfig, joint_steps: int, warm_checkpoint: str | None = None):
    """(trainer, recall before the warm-up or None, checkpoint path) of the shared warm-up.

    The warm-up trains the reader for ``config.freeze_retriever_steps`` steps (retriever frozen, index built
    once) and checkpoints; with ``warm_checkpoint``, that checkpoint of an earlier run is restored instead.
    The trainer's config runs ``joint_steps`` more steps, with refresh "none".
    """
    warm = Trainer(_warm_config(config, joint_steps))
    if warm_checkpoint is None:
        warm.build_index()
        before = warm.evaluator(generate=False)
        print("before joint training: " + format_metrics(before))
        while warm.step < config.freeze_retriever_steps:
            warm.train_step()
        return warm, before, warm.save_checkpoint()
    warm.resume(warm_checkpoint)
    if warm.step != config.freeze_retriever_steps:
        wanted = config.freeze_retriever_steps
        raise ConfigError(f"{warm_checkpoint} is at step {warm.step}, not freeze_retriever_steps = {wanted}")
    return warm, None, warm_checkpoint


def _other_task_recall(trainer: Trainer, task: str) -> float:
    """Dev recall@5 of ``trainer``'s retriever and index on another bundled task over the same corpus."""
    from atlas_fast.data.formats import read_examples
    from atlas_fast.data.prepare import ensure_prepared
    from atlas_fast.train.evaluate import Evaluator

    config = trainer.config
    examples = read_examples(ensure_prepared(config.data_root or None) / task / "dev.jsonl")
    if config.max_eval_examples:
        examples = examples[: config.max_eval_examples]
    evaluator = Evaluator(
        trainer.reader,
        trainer.retrieval.retrieve,
        examples,
        eval_k=(5,),
        n_context=config.n_context,
        generate_examples=0,
        autocast=trainer.autocast,
    )
    return evaluator(generate=False)["recall@5"]


def _summary(policy: str, runs: list[dict]) -> dict:
    """Mean of every metric over the seeds, each seed's recall@1, its spread (std), and the policy's kind."""
    summary = {key: float(np.mean([run[key] for run in runs])) for key in runs[0]}
    summary["recall@1_seeds"] = [run["recall@1"] for run in runs]
    summary["recall@1_std"] = float(np.std(summary["recall@1_seeds"]))
    summary["kind"] = KINDS[policy.split("+")[0]]
    return summary


def format_table(results: dict) -> str:
    """A markdown table of the experiment: means over the seeds, recall@1 with its spread."""
    other = f"{results['other_task']} recall@5" if results.get("other_task") else None
    recalls = [key for key in results["after_warmup"] if key.startswith("recall@")]  # recall@1 first (eval_k)
    keys = [*recalls, "recall@1 fresh", *([other] if other else [])]
    header = "| policy | kind | " + " | ".join(keys) + " | documents re-embedded | training s |"
    lines = [header, "|" + "---|" * (len(keys) + 4)]
    start = results["after_warmup"]
    cells = " | ".join(f"{start[k]:.3f}" if k in start else "–" for k in keys)
    lines.append(f"| (after warm-up, before joint steps) | – | {cells} | – | – |")
    for policy, row in results["policies"].items():
        values = [f"{row['recall@1']:.3f} ± {row['recall@1_std']:.3f}"] + [f"{row[k]:.3f}" for k in keys[1:]]
        cost = f"{row['documents_reembedded']:,.0f} | {row['seconds']:.0f}"
        lines.append(f"| {policy} | {row['kind']} | " + " | ".join(values) + f" | {cost} |")
    return "\n".join(lines)


def plot_results(results: dict, path) -> None:
    """recall@1 served (mean, with the seeds' spread) against documents re-embedded, one point per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for policy, row in results["policies"].items():
        seeds = row["recall@1_seeds"]
        spread = [[row["recall@1"] - min(seeds)], [max(seeds) - row["recall@1"]]]
        axes.errorbar(row["documents_reembedded"], row["recall@1"], yerr=spread, fmt="o", capsize=3)
        axes.annotate(
            policy,
            (row["documents_reembedded"], row["recall@1"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    axes.axhline(results["after_warmup"]["recall@1"], color="grey", linestyle=":", label="after warm-up")
    axes.set_xlabel("documents re-embedded during the joint steps")
    axes.set_ylabel("served dev recall@1")
    axes.set_title(f"Refresh policies, {results['joint_steps']} joint steps, seeds {results['seeds']}")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
