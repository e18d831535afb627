"""Nothing lost: checkpoints verified before use, resumes that never overwrite, index saves that are snapshots.

Each test asserts the message a user sees and that nothing was lost or changed.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from atlas_fast.index import DocumentIndex
from atlas_fast.train import checkpoint, train
from atlas_fast.train.checkpoint import CheckpointError
from atlas_fast.train.tiny import tiny_config

STATE = {key: torch.zeros(1) for key in checkpoint.STATE_KEYS}


def _save(output, step, state=STATE):
    def save_index(path):
        path.write_bytes(b"index bytes " * 100)

    return checkpoint.save_checkpoint(output, step, state, save_index, {"step": step})


def test_a_flipped_block_of_state_is_refused_with_the_file_named(tmp_path):
    big = dict(STATE, reader=torch.randn(64, 1024))  # 256 KiB of state
    path = _save(tmp_path, 2, big)
    data = bytearray((path / "state.pt").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)
    (path / "state.pt").write_bytes(data)
    with pytest.raises(CheckpointError, match=r"checkpoint-2/state\.pt: checksum mismatch"):
        checkpoint.load_state(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "state.pt").write_bytes((p / "state.pt").read_bytes()[:100]), r"state\.pt: 100 bytes, the "),
        (lambda p: (p / "index").unlink(), r"index: missing"),
        (lambda p: (p / "manifest.json").unlink(), r"manifest\.json: missing"),
        (lambda p: (p / "manifest.json").write_text("{"), r"manifest\.json: unreadable manifest"),
        (lambda p: (p / "extra.bin").write_bytes(b"x"), r"extra\.bin: not listed in the manifest"),
    ],
)
def test_a_damaged_checkpoint_is_refused(tmp_path, damage, message):
    path = _save(tmp_path, 1)
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load_state(path)


def test_a_state_without_a_key_is_refused(tmp_path):
    path = _save(tmp_path, 1, {key: value for key, value in STATE.items() if key != "optimizer"})
    with pytest.raises(CheckpointError, match=r"state\.pt: missing optimizer"):
        checkpoint.load_state(path)


def test_a_directory_that_is_not_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"manifest\.json: missing"):
        checkpoint.load_state(tmp_path)
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        checkpoint.load_state(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "pointer",
    [None, b"checkpoint-9\n", b"../../../etc\n", b"\xff\xfe not utf-8", b"checkpoint-4/../../x\n"],
    ids=["missing", "dangling", "outside", "not-utf8", "traversal"],
)
def test_resume_finds_the_newest_verified_checkpoint_whatever_latest_says(tmp_path, pointer):
    _save(tmp_path, 2)
    _save(tmp_path, 4)
    latest = tmp_path / "latest"
    latest.unlink()
    if pointer is not None:
        latest.write_bytes(pointer)
    assert checkpoint.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"


def test_a_corrupted_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    _save(tmp_path, 2)
    newest = _save(tmp_path, 4)
    (newest / "state.pt").write_bytes(b"garbage")
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-4"
    assert checkpoint.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


def test_no_verified_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    (_save(tmp_path, 2) / "index").unlink()
    with pytest.raises(CheckpointError, match=r"no checkpoint verifies: .*checkpoint-2/index: missing"):
        checkpoint.latest_checkpoint(tmp_path)
    assert checkpoint.latest_checkpoint(tmp_path / "empty") is None


def test_saving_a_step_again_writes_a_new_checkpoint_then_prunes_the_old_one(tmp_path):
    first = _save(tmp_path, 3)
    names_seen = []
    real_replace = os.replace

    def watching_replace(source, target):  # the moment `latest` moves, the checkpoint it names exists
        if str(target).endswith("latest"):
            names_seen.append((Path(source).read_text().strip(), sorted(p.name for p in tmp_path.glob("checkpoint-*"))))
        return real_replace(source, target)

    os.replace = watching_replace
    try:
        second = _save(tmp_path, 3)
    finally:
        os.replace = real_replace
    assert second.name == "checkpoint-3.1" and not first.exists()
    assert names_seen == [("checkpoint-3.1", ["checkpoint-3", "checkpoint-3.1"])]
    assert checkpoint.latest_checkpoint(tmp_path) == second


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_debris(tmp_path):
    previous = _save(tmp_path, 1)

    def disk_full(path):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        checkpoint.save_checkpoint(tmp_path, 2, STATE, disk_full, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "latest"]
    assert checkpoint.latest_checkpoint(tmp_path) == previous


_SAVER = """
import sys, torch
from atlas_fast.train import checkpoint
state = {key: torch.randn(256, 1024) for key in checkpoint.STATE_KEYS}
step = 0
while True:
    step += 1
    checkpoint.save_checkpoint(sys.argv[1], step, state, lambda p: p.write_bytes(b"i" * 2**20), {})
    print(step, flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_checkpoint_saves_leaves_a_verified_checkpoint(tmp_path):
    for attempt in range(3):
        output = tmp_path / f"run{attempt}"
        saver = subprocess.Popen([sys.executable, "-c", _SAVER, str(output)], stdout=subprocess.PIPE, text=True)
        saver.stdout.readline()  # one checkpoint complete
        time.sleep(0.05 + 0.13 * attempt)
        saver.send_signal(signal.SIGKILL)
        saver.wait()
        newest = checkpoint.latest_checkpoint(output)
        assert newest is not None
        assert set(checkpoint.load_state(newest)) == set(checkpoint.STATE_KEYS)


def test_index_save_during_concurrent_upserts_is_a_consistent_snapshot(tmp_path):
    dim, rows = 4, 140_000  # more rows than one write chunk (65,536)
    index = DocumentIndex(dim, n_threads=1)
    index.upsert(np.arange(rows), np.zeros((rows, dim), np.float32), step=0)
    overwritten = np.arange(0, rows, 7)
    stop = threading.Event()

    def writer():
        version = 1
        while not stop.is_set():
            new = np.arange(rows + 1000 * (version - 1), rows + 1000 * version)
            index.upsert(new, np.full((new.size, dim), version, np.float32), step=version)
            index.upsert(overwritten, np.full((overwritten.size, dim), version, np.float32), step=version)
            version += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        paths = []
        for attempt in range(4):
            paths.append(tmp_path / f"index-{attempt}.afi")
            index.save(paths[-1])
    finally:
        stop.set()
        thread.join()
    for path in paths:
        loaded = DocumentIndex.load(path)
        ids = loaded.ids()
        steps = loaded.step_of(ids)
        assert np.unique(ids).size == ids.size >= rows
        np.testing.assert_array_equal(loaded.get(ids), np.repeat(steps[:, None], dim, axis=1).astype(np.float32))
        assert np.unique(loaded.step_of(overwritten)).size == 1  # one upsert call is all in or all out


@pytest.mark.slow
def test_training_into_a_folder_with_checkpoints_needs_resume_and_never_overwrites(tmp_path):
    config = tiny_config(tmp_path, steps=4, checkpoint_every=2, freeze_retriever_steps=0)
    train(config)
    output = tmp_path / "run"
    saved = {path.name: (path / "state.pt").read_bytes() for path in checkpoint.checkpoints(output)}
    assert sorted(saved) == ["checkpoint-2", "checkpoint-4"]  # the end of the run saved no second step 4
    with pytest.raises(ValueError, match=r"already holds checkpoints \(newest checkpoint-4\); pass --resume"):
        train(config)
    (output / "latest").unlink()
    summary = train(tiny_config(tmp_path, steps=6, checkpoint_every=2, freeze_retriever_steps=0), resume=True)
    assert summary["steps"] == 6
    for name, data in saved.items():
        assert (output / name / "state.pt").read_bytes() == data
    assert json.loads((output / "checkpoint-6" / "manifest.json").read_text())["files"]["state.pt"]["bytes"] > 0
    for path in checkpoint.checkpoints(output):
        (path / "state.pt").write_bytes(b"corrupted")
    with pytest.raises(CheckpointError, match="no checkpoint verifies"):
        train(config, resume=True)
