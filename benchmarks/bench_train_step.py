"""One training step, split by phase: retrieve, re-embed, gold scores, reader, backward, refresh.

The providers are the retriever-loss modes; PDist (Atlas's default) is the baseline, so
the ratios say what ADist, LOOP and EMDR² cost on top. Each benchmark's extra_info
holds the mean seconds per phase over its rounds (`phase_seconds`), which BENCHMARKS.md
prints so the slowest phase is visible. Two sizes: the tests' tiny models, and the
default run's MiniLM retriever and reader (skipped in the --benchmark-disable smoke run).
"""

import time
from collections import defaultdict

import pytest
import torch
from harness import run_provider

from atlas_fast.models import packaged_minilm_path
from atlas_fast.testing.tiny import tiny_config
from atlas_fast.train import TrainConfig, Trainer

PHASES = ("retrieve", "reembed", "gold", "reader", "backward", "refresh")


@pytest.mark.parametrize("provider", ["pdist", "adist", "loop", "emdr"])
@pytest.mark.parametrize("size", ["tiny", "minilm"])
def test_train_step(benchmark, tmp_path, provider, size):
    if benchmark.disabled and size != "tiny":
        pytest.skip("the smoke run keeps to the tiny models")
    overrides = dict(gold_score_mode=provider, refresh="incremental", checkpoint_every=0, steps=10**6)
    if size == "minilm":
        overrides.update(
            retriever_path=str(packaged_minilm_path()),
            batch_size=16,
            n_context=5,
            refresh_budget=64,
            reader_passage_max_length=48,
            passage_max_length=64,
        )
    trainer = Trainer(tiny_config(tmp_path, **overrides))
    trainer.build_index()
    phases = defaultdict(list)

    def step():
        record = trainer.train_step()
        for phase in PHASES:
            phases[phase].append(record[f"time_{phase}"])

    config = trainer.config
    shape = f"B={config.batch_size} K={config.n_context} {size} refresh={config.refresh}/{config.refresh_budget}"
    run_provider(
        benchmark,
        step,
        op="train_step",
        shape=shape,
        mode="fwd+bwd",
        provider=provider,
        baseline="pdist",
        device=torch.device("cpu"),
    )
    benchmark.extra_info["phase_seconds"] = {phase: sum(v) / len(v) for phase, v in phases.items() if v}


@pytest.mark.parametrize("provider", ["eager", "compiled"])
def test_train_step_compiled(benchmark, tmp_path, provider):
    """The default run's joint step (MiniLM retriever and reader, B=16, K=5, bf16 autocast, PDist) with and without
    `compile = true`; extra_info["first_step_s"] is the first step, which pays for compiling."""
    if benchmark.disabled:
        pytest.skip("the smoke run leaves compiling out (minutes on 2 cores)")
    config = TrainConfig(
        freeze_retriever_steps=0, checkpoint_every=0, progress=False, compile=provider == "compiled",
        output_dir=str(tmp_path / "run"), steps=10**6,
    )  # fmt: skip
    trainer = Trainer(config)
    trainer.build_index()
    started = time.perf_counter()
    trainer.train_step()
    benchmark.extra_info["first_step_s"] = time.perf_counter() - started
    run_provider(
        benchmark,
        trainer.train_step,
        op="train_step",
        shape=f"B={config.batch_size} K={config.n_context} default run, joint step",
        mode="fwd+bwd",
        provider=provider,
        baseline="eager",
        device=torch.device("cpu"),
    )
