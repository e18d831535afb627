"""The trainer reads top to bottom: one joint step runs through a few files of its own, and no collaborator calls
back into the trainer. Measured, not asserted by hand: every Python call a step makes is traced."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import atlas_fast
from atlas_fast.testing.tiny import tiny_config
from atlas_fast.train import Trainer

PACKAGE = Path(atlas_fast.__file__).parent
TRAINER_FILE = "train/trainer.py"
# The trainer's own code; index/ and the ops (losses, fid_patch and what they dispatch to) are libraries it calls.
TRAINER_SIDE = ("train/", "models/", "data/")


def _profiled(action) -> list[tuple[str, str, str]]:
    """(caller file, callee file, callee function) of every call ``action`` makes into atlas_fast."""
    calls = []

    def trace(frame, event, arg):  # called for each new Python frame; returning None skips its lines
        callee = frame.f_code.co_filename
        if callee.startswith(str(PACKAGE)):
            caller = frame.f_back.f_code.co_filename if frame.f_back else ""
            relative = Path(callee).relative_to(PACKAGE).as_posix()
            calls.append((caller, relative, frame.f_code.co_name))

    sys.settrace(trace)
    try:
        action()
    finally:
        sys.settrace(None)
    return calls


def _callbacks(calls: list[tuple[str, str, str]]) -> set[tuple[str, str]]:
    """(caller file name, trainer function) of every call from another atlas_fast file into the trainer."""
    return {
        (Path(caller).name, function)
        for caller, callee, function in calls
        if callee == TRAINER_FILE and caller.startswith(str(PACKAGE)) and not caller.endswith(TRAINER_FILE)
    }


@pytest.mark.parametrize("policy", ["incremental", "rerank"])
def test_a_joint_step_runs_through_at_most_ten_trainer_files_and_never_back_into_the_trainer(tmp_path, policy):
    trainer = Trainer(tiny_config(tmp_path, refresh=policy, refresh_every=1, freeze_retriever_steps=0))
    trainer.build_index()
    trainer.train_step()  # first-call work (lazy imports, caches) is not the step's
    calls = _profiled(trainer.train_step)
    files = {callee for _, callee, _ in calls}
    trainer_side = sorted(f for f in files if f.startswith(TRAINER_SIDE))
    assert len(trainer_side) <= 10, trainer_side
    assert {"train/trainer.py", "train/joint.py", "train/retrieval.py", "index/refresh.py"} <= files
    callbacks = _callbacks(calls)
    assert not callbacks, f"collaborators call back into the trainer: {callbacks}"


def test_evaluation_and_the_warm_up_never_call_back_into_the_trainer(tmp_path):
    config = tiny_config(tmp_path, freeze_retriever_steps=2, warmup_cache_examples=8, reader_copy_steps=1)
    trainer = Trainer(config)
    trainer.build_index()

    def warm_up_and_evaluate():
        trainer.train_step()
        trainer.train_step()
        trainer.warmup.dev_reader_loss(trainer.step)
        trainer.evaluator(generate=False)

    calls = _profiled(warm_up_and_evaluate)
    assert {"train/warmup.py", "train/evaluate.py"} <= {callee for _, callee, _ in calls}
    callbacks = _callbacks(calls)
    assert not callbacks, f"collaborators call back into the trainer: {callbacks}"
