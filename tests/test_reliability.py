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
from atlas_fast.testing.tiny import tiny_config, tiny_train_config
from atlas_fast.train import checkpoint, train
from atlas_fast.train.checkpoint import CheckpointError

STATE = {key: torch.zeros(1) for key in checkpoint.STATE_KEYS + checkpoint.MODEL_KEYS}


def _save(output, step, state=STATE):
    def save_index(path):
        path.write_bytes(b"index bytes " * 100)

    return checkpoint.save_checkpoint(output, step, state, {checkpoint.INDEX_FILE: save_index}, {"step": step})


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
        checkpoint.save_checkpoint(tmp_path, 2, STATE, {checkpoint.INDEX_FILE: disk_full}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "latest"]
    assert checkpoint.latest_checkpoint(tmp_path) == previous


_SAVER = """
import sys, torch
from atlas_fast.train import checkpoint
keys = checkpoint.STATE_KEYS + checkpoint.MODEL_KEYS
state = {key: torch.randn(256, 1024) for key in keys}
write_index = {checkpoint.INDEX_FILE: lambda p: p.write_bytes(b"i" * 2**20)}
step = 0
while True:
    step += 1
    checkpoint.save_checkpoint(sys.argv[1], step, state, write_index, {})
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
        assert set(checkpoint.load_state(newest)) == set(checkpoint.STATE_KEYS + checkpoint.MODEL_KEYS)


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


def test_torch_index_under_concurrent_search_upsert_and_remove_stays_whole():
    from atlas_fast.index import TorchDocumentIndex

    dim = 8
    index = TorchDocumentIndex(dim, "float32", "cpu")
    index.upsert(np.arange(2000), np.ones((2000, dim), np.float32))
    errors = []

    def run(work):
        try:
            for round_ in range(60):
                work(round_)
        except Exception as error:  # recorded: a torn row or a broken id map shows up here
            errors.append(error)

    def churn(round_):
        ids = np.arange(2000 + 100 * round_, 2100 + 100 * round_)
        index.upsert(ids, np.full((100, dim), round_, np.float32), step=round_)
        index.remove(ids[::2])

    def search(_):
        scores, found = index.search(np.ones((4, dim), np.float32), 10)
        assert (found >= 0).all() and np.isfinite(scores).all()

    threads = [threading.Thread(target=run, args=(work,)) for work in (churn, search, search)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ids = index.ids()
    assert index.get(ids).shape == (ids.size, dim) and ids.size == 2000 + 60 * 50


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda i: i.upsert([2**63], np.ones((1, 4))), "ids must fit in int64"),
        (lambda i: i.upsert([1], torch.ones(1, 4, dtype=torch.int64)), "vectors must hold floats"),
        (lambda i: i.upsert([1], np.ones((1, 4), np.int64)), "vectors must hold floats"),
        (lambda i: i.upsert([1], np.ones((1, 4)), step=1.7), r"step must be an integer in \[0, 2\*\*31\); got 1.7"),
        (lambda i: i.record_retrieved(np.array([1.9])), "ids must hold integers; got dtype float64"),
    ],
)
@pytest.mark.parametrize("kind", ["host", "torch"])
def test_no_silent_conversion(kind, call, message):
    from atlas_fast.index import TorchDocumentIndex

    index = DocumentIndex(4) if kind == "host" else TorchDocumentIndex(4, "float32", "cpu")
    index.upsert([1], np.zeros((1, 4)), step=3)
    with pytest.raises(ValueError, match=message):
        call(index)
    assert index.ids().tolist() == [1] and index.step_of([1]).tolist() == [3]


def _sharded_validation(rank, world_size, rendezvous):
    import torch.distributed as dist

    from atlas_fast.index import ShardedIndex

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        index = ShardedIndex(64)
        index.upsert(np.arange(4) + 10 * rank, np.ones((4, 64)))
        before = len(index)
        cases = [
            (lambda: index.upsert([1, 2], np.ones((2, 128))), r"vectors must have shape \(n, 64\)"),
            (lambda: index.search(np.ones((2, 32)), 3), r"queries must have shape \(n, 64\)"),
            (lambda: index.upsert(np.array([1.5, 2.5]), np.ones((2, 64))), "ids must hold integers"),
            (lambda: index.search(np.ones((1, 64)), 0), "k must be a positive integer"),
        ]
        for call, message in cases:
            with pytest.raises(ValueError, match=message):
                call()
        # Bad input on rank 1 only: rank 0 must not hang in the all-gather, and says where the error is.
        bad = np.ones((1, 128)) if rank == 1 else np.ones((1, 64))
        expected = r"vectors must have shape" if rank == 1 else "invalid input on another rank"
        with pytest.raises(ValueError, match=expected):
            index.upsert([100 + rank], bad)
        assert len(index) == before
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_sharded_index_validates_like_document_index_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_sharded_validation, args=(2, tmp_path / "rendezvous"), nprocs=2, join=True)


def test_every_numeric_config_key_has_a_range_that_refuses_values_outside():
    import dataclasses

    from atlas_fast.train.config import NUMERIC_RANGES, ConfigError, TrainConfig

    numeric = {f.name for f in dataclasses.fields(TrainConfig) if f.type in ("int", "float", "tuple[int, ...]")}
    assert numeric == set(NUMERIC_RANGES)
    for key, (low, open_low) in NUMERIC_RANGES.items():
        bad = low if open_low else low - 1
        with pytest.raises(ConfigError, match=key):
            tiny_train_config(**{key: (1, bad) if key == "eval_k" else bad})


@pytest.mark.parametrize("item", ["retriever_lr=-1", "max_passages=-100", "time_budget_s=nan"])
def test_out_of_range_settings_exit_2_naming_key_and_range(item, capsys):
    from atlas_fast import cli

    assert cli.main(["train", "--set", item]) == 2
    key = item.split("=")[0]
    assert f"{key} must be in [0, ∞)" in capsys.readouterr().err


def test_the_training_target_is_the_first_non_blank_answer(tmp_path):
    from atlas_fast.data.formats import DataFormatError, read_examples

    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "q1", "answers": ["", "  ", "Canyon 0"]}\n{"question": "q2", "answers": [""]}\n')
    with pytest.raises(DataFormatError, match=r"qa\.jsonl:2: the question has no answers"):
        read_examples(path)
    path.write_text('{"question": "q1", "answers": ["", "  ", "Canyon 0"]}\n')
    (example,) = read_examples(path)
    assert example.target == "Canyon 0" and example.answers[0] == ""


def _resigned(path, data: bytes) -> None:
    """Write ``data`` (a whole index file) with a valid trailing checksum: a crafted file."""
    import hashlib

    body = data[:-32]
    path.write_bytes(body + hashlib.sha256(body).digest())


def _index_file(tmp_path, dtype="float32"):
    index = DocumentIndex(4, dtype)
    index.upsert([5, 6], np.ones((2, 4), np.float32), step=2)
    path = tmp_path / "crafted.afi"
    index.save(path)
    return path, bytearray(path.read_bytes())


def _header_end(data: bytes) -> int:
    import struct

    (length,) = struct.unpack_from("<I", data, 12)
    return 16 + length


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
@pytest.mark.parametrize("field", ["id", "step", "vector"])
def test_crafted_index_rows_with_a_valid_checksum_are_refused(tmp_path, dtype, field):
    from atlas_fast.index import IndexFileError

    path, data = _index_file(tmp_path, dtype)
    start = _header_end(data)  # rows: 2 ids (int64), 2 steps (int32), 2 counts (uint32), then vectors
    if field == "id":
        data[start : start + 8] = np.int64(-1).tobytes()
        message = "holds id -1"
    elif field == "step":
        data[start + 16 : start + 20] = np.int32(-3).tobytes()
        message = "negative steps"
    elif dtype == "int8":  # the first row's scale: after its 4 values (a multiple of 4: no padding)
        data[start + 36 : start + 40] = np.float32(-1.0).tobytes()
        message = "int8 row whose scale is negative"
    else:
        nan = {"float32": np.float32(np.nan), "float16": np.float16(np.nan), "bfloat16": np.uint16(0x7FC0)}[dtype]
        data[start + 32 : start + 32 + nan.nbytes] = nan.tobytes()
        message = "NaN or infinite"
    _resigned(path, bytes(data))
    with pytest.raises(IndexFileError, match=message):
        DocumentIndex.load(path)


@pytest.mark.parametrize(
    "header", [b'{"dim": 1e30, "dtype": "float32", "count": 0, "chunk_rows": 1}', b"[" * 100_000 + b"]" * 100_000]
)
def test_crafted_index_headers_give_index_file_errors(tmp_path, header):
    import struct

    from atlas_fast.index import IndexFileError

    path = tmp_path / "crafted.afi"
    _resigned(path, b"ATLASIDX" + struct.pack("<II", 1, len(header)) + header + bytes(32))
    with pytest.raises(IndexFileError, match=r"invalid header|unreadable header"):
        DocumentIndex.load(path)


def test_index_info_on_a_missing_file_or_a_directory_is_a_clear_error(tmp_path):
    from atlas_fast.index import IndexFileError

    with pytest.raises(IndexFileError, match="no such index file"):
        DocumentIndex.load(tmp_path / "absent.afi")
    with pytest.raises(IndexFileError, match="it is a directory"):
        DocumentIndex.load(tmp_path)


def test_temporaries_of_killed_saves_are_cleaned_up(tmp_path):
    path, _ = _index_file(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".crafted.afi.tmp-{int(dead.stdout)}"
    stale.write_bytes(b"x" * 1000)
    alive = tmp_path / f".crafted.afi.tmp-{os.getppid()}"  # a live process's save in progress is left alone
    alive.write_bytes(b"y")
    DocumentIndex.load(path).save(path)
    assert not stale.exists() and alive.exists()


@pytest.mark.parametrize(("B", "T", "L"), [(0, 4, 3), (2, 0, 3), (2, 4, 0)])
@pytest.mark.parametrize("mass", [None, "prob", "vnorm"])
def test_fid_cross_attention_on_empty_inputs_gives_zeros_of_the_right_shapes(B, T, L, mass):
    from atlas_fast.attention import fid_cross_attention

    q = torch.randn(B, 2, T, 8, requires_grad=True)
    k = torch.randn(B, 2, 2 * L, 8, requires_grad=True)
    v = torch.randn(B, 2, 2 * L, 8)
    result = fid_cross_attention(q, k, v, torch.ones(B, 2 * L, dtype=torch.bool), 2, passage_mass=mass)
    out = result if mass is None else result[0]
    assert out.shape == (B, 2, T, 8) and not out.any()
    if mass is not None:
        assert result[1].shape == (B, 2, T, 2) and not result[1].any()
    out.sum().backward()
    assert not q.grad.any() and not k.grad.any()


def test_loss_edge_cases_are_results_or_named_errors():
    from atlas_fast import losses

    scores = torch.randn(3, 0, requires_grad=True)
    loss = losses.emdr_loss(scores, torch.randn(3, 0, 4), torch.zeros(3, 4, dtype=torch.long))
    assert loss.item() == 0.0 == losses.kldivloss(torch.randn(3, 0), torch.randn(3, 0)).item()
    with pytest.raises(ValueError, match=r"scores / temperature_score overflows float32 \(max \|scores\| = 3e\+38"):
        losses.kldivloss(torch.full((2, 3), 3e38), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="overflows float32"):
        losses.kldivloss(torch.ones(2, 3), torch.zeros(2, 3), temperature_score=1e-45)
    with pytest.raises(ValueError, match="scores / temperature_score overflows"):
        losses.emdr_loss(torch.full((2, 3), 3e38), torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    weight = torch.randn(10, 4)
    weight[3, 1] = float("nan")
    with pytest.raises(ValueError, match="lm_head_weight contains NaN"):
        losses.pdist_gold_scores(torch.randn(1, 2, 3, 4), weight, torch.zeros(1, 3, dtype=torch.long))


def test_index_search_refuses_another_passages_file(tmp_path, capsys):
    from atlas_fast import cli

    config = tiny_config(tmp_path)
    index_path = tmp_path / "corpus.afi"
    assert cli.main(["index", "build", config.passages, str(index_path), "--retriever", config.retriever_path]) == 0
    other = tmp_path / "other.jsonl"
    lines = Path(config.passages).read_text(encoding="utf-8").splitlines()
    other.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n", encoding="utf-8")  # same rows, reordered
    capsys.readouterr()
    command = ["index", "search", str(index_path), str(other), "Castle 3", "--retriever", config.retriever_path]
    assert cli.main(command) == 2
    assert "other.jsonl does not hold the passages" in capsys.readouterr().err


def test_index_build_checks_its_output_before_embedding(tmp_path, capsys):
    from atlas_fast import cli

    config = tiny_config(tmp_path)
    for output, message in ((tmp_path, "is a directory"), (tmp_path / "no" / "x.afi", "does not exist")):
        assert cli.main(["index", "build", config.passages, str(output), "--retriever", config.retriever_path]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_takes_no_path_from_a_strangers_checkpoint(tmp_path, capsys):
    from atlas_fast import cli

    config = tiny_config(tmp_path, steps=2, checkpoint_every=2, freeze_retriever_steps=0)
    train(config)
    stranger = tmp_path / "run" / "checkpoint-2"
    stored = json.loads((stranger / "config.json").read_text())
    stored.update(data_root=str(tmp_path / "evil-data"), output_dir=str(tmp_path / "evil-out"))
    (stranger / "config.json").write_text(json.dumps(stored))
    (stranger / "manifest.json").unlink()
    checkpoint._write_manifest(stranger)  # a consistent, checksummed stranger's checkpoint
    paths = ["passages", "train_data", "eval_data", "retriever_path"]
    settings = [arg for key in paths for arg in ("--set", f"{key}={json.dumps(getattr(config, key))}")]
    before = sorted(path.name for path in tmp_path.rglob("*"))
    assert cli.main(["evaluate", str(stranger), *settings]) == 0
    assert "recall@1:" in capsys.readouterr().out
    assert sorted(path.name for path in tmp_path.rglob("*")) == before  # nothing written anywhere under tmp_path


@pytest.mark.slow
def test_a_resume_logs_each_step_once_and_reports_before(tmp_path):
    import shutil

    config = tiny_config(tmp_path, steps=4, checkpoint_every=2, freeze_retriever_steps=0)
    train(config)
    output = tmp_path / "run"
    shutil.rmtree(output / "checkpoint-4")  # as if the run had crashed between its two checkpoints
    summary = train(config, resume=True)
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    assert summary["before"] is not None and "recall@1" in summary["before"]
    assert json.loads((output / "summary.json").read_text())["before"] == summary["before"]


def test_an_unknown_passage_id_is_a_file_line_error(tmp_path):
    from atlas_fast.data.formats import DataFormatError
    from atlas_fast.train.setup import load_data

    config = tiny_config(tmp_path)
    lines = Path(config.eval_data).read_text().splitlines()
    record = json.loads(lines[2])
    record["passage_id"] = "no-such-passage"
    lines[2] = json.dumps(record)
    Path(config.eval_data).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"eval\.jsonl:3: passage_id 'no-such-passage' is not in .*passages"):
        load_data(config)


def _bad_data_cases(tmp_path):
    return {
        "deeply nested": ('{"id": "x", "title": ' + "[" * 100_000 + "]" * 100_000 + "}\n").encode(),
        "lone surrogate": b'{"id": "x", "title": "\\ud800", "text": "t"}\n',
        "not UTF-8": b'{"id": "x", "title": "ok", "text": "t"}\n{"id": "y", "title": "\xff\xfe", "text": "t"}\n',
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("deeply nested", r"passages\.jsonl:1: JSON nested too deeply"),
        ("lone surrogate", r"passages\.jsonl:1: holds a lone surrogate"),
        ("not UTF-8", r"passages\.jsonl:2: not UTF-8 text"),
    ],
)
def test_bad_passage_lines_name_file_and_line(tmp_path, case, message):
    from atlas_fast.data.formats import DataFormatError, read_passages

    path = tmp_path / "passages.jsonl"
    path.write_bytes(_bad_data_cases(tmp_path)[case])
    with pytest.raises(DataFormatError, match=message):
        read_passages(path)


def test_cli_errors_instead_of_tracebacks(tmp_path, capsys):
    from atlas_fast import cli

    (tmp_path / "bad.toml").write_bytes(b'steps = 3\ntask = "\xff"\n')
    cases = [
        (["train", "--config", str(tmp_path)], "is a directory; give a TOML file"),
        (["train", "--config", str(tmp_path / "bad.toml")], "bad.toml:2: not UTF-8 text"),
        (["evaluate", str(tmp_path)], "manifest.json: missing"),
        (["index", "info", str(tmp_path / "absent.afi")], "no such index file"),
        (["index", "info", str(tmp_path)], "it is a directory"),
    ]
    for command, message in cases:
        assert cli.main(command) == 2, command
        assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where there is no CUDA")
def test_cuda_without_cuda_and_a_file_as_output_dir_are_config_errors(tmp_path):
    from atlas_fast.train import ConfigError, Trainer
    from atlas_fast.train.setup import resolve_device

    with pytest.raises(ConfigError, match="device 'cuda': CUDA is not available"):
        resolve_device("cuda")
    (tmp_path / "plain-file").write_text("x")
    with pytest.raises(ConfigError, match="plain-file: cannot be created"):
        Trainer(tiny_config(tmp_path, output_dir=str(tmp_path / "plain-file")))
