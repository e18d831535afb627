"""`atlas-fast train`: a whole run — index build, evaluation before, training, evaluation after, report."""

from __future__ import annotations

import json
import os
import tempfile
import time

from tqdm.auto import tqdm

from atlas_fast.train import checkpoint
from atlas_fast.train.config import ConfigError, TrainConfig
from atlas_fast.train.plot import plot_metrics
from atlas_fast.train.setup import collective_device
from atlas_fast.train.trainer import Trainer

__all__ = ["evaluate_checkpoint", "format_metrics", "format_summary", "train"]

# Configuration keys that name files or folders. A checkpoint may come from a stranger, so its config.json
# never decides what is read or written: these come from the user's --set (or the defaults) only.
PATH_KEYS = ("data_root", "passages", "train_data", "eval_data", "retriever_path", "reader_path", "output_dir")


def evaluate_checkpoint(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Dev metrics of a checkpoint: its settings, but paths only from ``overrides`` (``key=value``) or defaults.

    Nothing is written: the run's output goes to a temporary folder that is removed afterwards.

    Raises:
        CheckpointError: the checkpoint does not verify or its config.json is unreadable.
    """
    directory = checkpoint.verify_checkpoint(path)
    try:
        stored = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        if not isinstance(stored, dict):
            raise TypeError("not a JSON object")
    except (OSError, ValueError, TypeError, RecursionError) as error:
        raise checkpoint.CheckpointError(f"{directory / 'config.json'}: unreadable ({error})") from error
    ignored = sorted(key for key in PATH_KEYS if stored.get(key))
    if ignored:
        print(f"not taken from the checkpoint (paths: --set them where the defaults differ): {', '.join(ignored)}")
    settings = [f"{key}={json.dumps(value)}" for key, value in stored.items() if key not in PATH_KEYS]
    with tempfile.TemporaryDirectory(prefix="atlas-fast-evaluate-") as scratch:
        config = TrainConfig.load(None, [*settings, *(overrides or []), f"output_dir={json.dumps(scratch)}"])
        trainer = Trainer(config)
        trainer.resume(directory, verified=True)
        return trainer.evaluator()


def train(config: TrainConfig, resume: bool = False, trainer: Trainer | None = None) -> dict:
    """Run training as configured; returns a summary (metrics before and after, cost, timings)."""
    started = time.perf_counter()
    trainer = trainer if trainer is not None else Trainer(config)
    say = print if trainer.rank == 0 else (lambda *_: None)
    existing = checkpoint.checkpoints(trainer.output_dir)
    if existing and not resume:
        raise ConfigError(
            f"output_dir {trainer.output_dir} already holds checkpoints (newest {existing[-1].name}); "
            "pass --resume to continue from them, or choose another output_dir"
        )
    if resume and trainer.resume():  # a CheckpointError (none verifies) stops here: nothing is overwritten
        say(f"resumed from step {trainer.step} ({trainer.resumed_from})")
        logged = [r for r in trainer.metrics_log.records() if r.get("step") == 0 and r.get("split") == "eval"]
        before = {key: value for key, value in logged[0].items() if key not in ("step", "split")} if logged else None
    else:
        if resume:
            say(f"no checkpoint in {trainer.output_dir}: starting at step 0")
        clock = time.perf_counter()
        trainer.build_index()
        seconds = time.perf_counter() - clock
        say(f"index: {len(trainer.passages)} passages embedded in {seconds:.1f} s (precision {trainer.precision})")
        before = trainer.evaluator(generate=False)
        trainer.metrics_log.append({"step": 0, "split": "eval", **before})
        say("before training: " + format_metrics(before))
    training_started = time.perf_counter()
    progress = tqdm(
        total=config.steps, initial=trainer.step, desc="training", disable=not config.progress or trainer.rank
    )
    while trainer.step < config.steps:
        record = trainer.train_step()
        trainer.metrics_log.append({"split": "train", **record})
        progress.update(1)
        progress.set_postfix(reader=f"{record['reader_loss']:.3f}", retriever=_maybe(record["retriever_loss"]))
        if config.dev_loss_every and trainer.step % config.dev_loss_every == 0:
            dev_loss = trainer.warmup.dev_reader_loss(trainer.step)
            trainer.metrics_log.append({"step": trainer.step, "split": "dev", "reader_loss": dev_loss})
        if config.eval_every and trainer.step % config.eval_every == 0 and trainer.step < config.steps:
            trainer.metrics_log.append({"step": trainer.step, "split": "eval", **trainer.evaluator(generate=False)})
        if config.checkpoint_every and trainer.step % config.checkpoint_every == 0:
            trainer.save_checkpoint()
        if config.time_budget_s and time.perf_counter() - training_started > config.time_budget_s:
            say(f"time budget of {config.time_budget_s:.0f} s reached at step {trainer.step}")
            break
    progress.close()
    training_seconds = time.perf_counter() - training_started
    after = trainer.evaluator(generate=True)
    trainer.metrics_log.append({"step": trainer.step, "split": "eval", **after})
    if trainer.saved_step != trainer.step:  # a periodic save of this step holds the exact state to continue from
        trainer.save_checkpoint()
    summary = {
        "steps": trainer.step,
        "precision": trainer.precision,
        "before": before,
        "after": after,
        "documents_reembedded": _sum_over_ranks(trainer.refresh.documents_embedded, trainer.world_size),
        "training_seconds": training_seconds,
        "total_seconds": time.perf_counter() - started,
    }
    if trainer.rank == 0:
        (trainer.output_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        plot_metrics(trainer.output_dir / "metrics.jsonl", trainer.output_dir / "metrics.png")
        say(format_summary(summary))
    return summary


def _sum_over_ranks(value: int, world_size: int) -> int:
    """Each rank re-embeds its own shard: the run's cost is the sum."""
    if world_size == 1:
        return value
    import torch
    import torch.distributed as dist

    total = torch.tensor([value], dtype=torch.int64, device=collective_device())
    dist.all_reduce(total)
    return int(total.item())


def _maybe(value) -> str:
    return "frozen" if value is None else f"{value:.3f}"


def format_metrics(metrics: dict) -> str:
    """One line: "key value, ..." with floats to 3 decimals."""
    return ", ".join(
        f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}" for key, value in metrics.items()
    )


def format_summary(summary: dict) -> str:
    after = summary["after"]
    lines = [
        f"after {summary['steps']} steps ({summary['training_seconds']:.0f} s training, "
        f"{summary['total_seconds']:.0f} s in all, {summary['documents_reembedded']} documents re-embedded):"
    ]
    recalls = [key for key in after if key.startswith("recall@")]
    if summary["before"] is not None:
        lines.append(
            "  dev retrieval  "
            + "   ".join(f"{key} {summary['before'][key]:.3f} -> {after[key]:.3f}" for key in recalls)
        )
    else:
        lines.append("  dev retrieval  " + "   ".join(f"{key} {after[key]:.3f}" for key in recalls))
    if "teacher@1" in after:
        lines.append(
            f"  reader as teacher: ranks the gold passage first {after['teacher@1']:.3f} of the time when it is "
            f"retrieved (retriever's own top-1: {after['retriever@1_same_examples']:.3f}, "
            f"{after['teacher_examples']} examples)"
        )
        lines.append(
            f"  answers: EM {after['em']:.3f}  F1 {after['f1']:.3f}   controls: copy the top-1 title "
            f"{after['em_top1_title']:.3f}, another question's passages {after['em_other_passages']:.3f}"
        )
    return "\n".join(lines)
