"""The README's data-parallel launch, `torchrun --nproc-per-node 2 -m atlas_fast.cli train`, run again and again
under CPU load, from a folder outside the repository: no run may abort.

A 2-rank run once aborted under load ("terminate called without an active exception" on rank 1, early in
training; issue 29). Contention makes such a race likelier, so the runs share the CPUs with a busy loop.
CI runs 10 launches (each takes ~30 s on 2 loaded cores there), every other one with parallel = "fsdp";
ATLAS_FAST_SOAK_RUNS=20 runs the full soak.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from atlas_fast.testing.tiny import set_arguments, tiny_config

RUNS = int(os.environ.get("ATLAS_FAST_SOAK_RUNS", "10"))


@pytest.mark.slow
def test_two_rank_cli_training_never_aborts_under_load(tmp_path):
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for run in range(RUNS):
            # output_dir is relative: the run writes under the folder torchrun starts in.
            # Every other run shards the models (parallel = "fsdp"): the same launch, with DCP checkpoints.
            parallel = ("ddp", "fsdp")[run % 2]
            config = tiny_config(
                tmp_path, steps=2, checkpoint_every=2, eval_every=1, output_dir=f"run-{run}", parallel=parallel
            )
            command = [
                *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"),
                *("-m", "atlas_fast.cli", "train", *set_arguments(config)),
            ]
            result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
            failure = f"run {run + 1} of {RUNS} exited {result.returncode}:\n{result.stderr[-3000:]}"
            assert result.returncode == 0, failure
            assert (tmp_path / f"run-{run}" / "checkpoint-2").is_dir()
            assert (tmp_path / f"run-{run}" / "checkpoint-2" / "model").is_dir() == (parallel == "fsdp")
    finally:
        busy.kill()
        busy.wait()
