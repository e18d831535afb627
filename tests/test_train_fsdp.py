"""``parallel = "fsdp"`` on 2 gloo ranks: sharded training equals one process's, and sharded checkpoints
(torch.distributed.checkpoint) resume on another world size (2 ranks → 1 process, 1 process → 2 ranks).

As in test_train_distributed.py, two ranks with batch_size B train what one process trains with
batch_size 2B; the tiny models have no dropout, so every run is deterministic.
"""

import json
import shutil

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from atlas_fast.testing.tiny import data_parallel_config, write_tiny_bert
from atlas_fast.train import Trainer, checkpoint
from atlas_fast.train.run import evaluate_checkpoint
from atlas_fast.train.sharding import full_state_dict

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS = 3


def _config(tmp_path, output, batch_size, **overrides):
    return data_parallel_config(tmp_path, output, batch_size, parallel="fsdp", **overrides)


def _record(records) -> dict:
    return {key: [r[key] for r in records] for key in ("reader_loss", "retriever_loss", "grad_norm")}


def _optimizer_moments(trainer) -> dict:
    """A copy of the optimizer's tensors by parameter name, whole (gathered from every rank when sharded)."""
    from atlas_fast.train.sharded_checkpoint import state_dicts

    tensors, _ = state_dicts(trainer.model, trainer.optimizer)
    return {
        f"{name}.{key}": (value.full_tensor() if hasattr(value, "full_tensor") else value).clone()
        for name, moments in tensors["optimizer"].items()
        for key, value in moments.items()
    }


def _count_all_gathers(counter: dict) -> None:
    """Count FSDP's all-gathers in ``counter["calls"]`` (this process only: a spawned rank)."""
    original = dist.all_gather_into_tensor

    def counting(*args, **kwargs):
        counter["calls"] += 1
        return original(*args, **kwargs)

    dist.all_gather_into_tensor = counting


def _two_ranks_train(rank, world_size, rendezvous, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        trainer = Trainer(_config(tmp_path, "two-ranks", batch_size=2))
        assert trainer.sharded
        trainer.build_index()
        records = _record([trainer.train_step() for _ in range(STEPS)])
        # Evaluation generates token by token; the weights are gathered once for all of it, not per forward.
        counter = {"calls": 0}
        _count_all_gathers(counter)
        metrics = trainer.evaluator(generate=True)
        units = sum(1 for module in trainer.model.modules() if hasattr(module, "unshard"))
        assert counter["calls"] <= units, (counter["calls"], units)
        saved = trainer.save_checkpoint()
        weights = full_state_dict(trainer.model)
        moments = _optimizer_moments(trainer)
        resumed = Trainer(_config(tmp_path, "two-ranks", batch_size=2))  # 2 ranks → 2 ranks
        assert resumed.resume() and resumed.step == STEPS
        again = full_state_dict(resumed.model)
        assert all(torch.equal(again[name], value) for name, value in weights.items())
        ranks = [None] * world_size
        dist.all_gather_object(ranks, records)
        if rank == 0:
            assert sorted(p.name for p in (saved / checkpoint.MODEL_DIR).iterdir()) == [
                ".metadata",
                "__0_0.distcp",
                "__1_0.distcp",
            ]  # each rank wrote its own shard
            torch.save(
                {
                    "ranks": ranks,
                    "weights": weights,
                    "moments": moments,
                    "recall": {k: v for k, v in metrics.items() if k.startswith("recall@")},
                },
                tmp_path / "two-ranks.pt",
            )
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_fsdp_on_two_ranks_trains_what_one_process_trains_and_its_checkpoint_resumes_in_one(tmp_path):
    write_tiny_bert(tmp_path / "bert-no-dropout", dropout=0.0)
    _config(tmp_path, "one-process", 4)  # write the corpus once, before the ranks start
    mp.spawn(_two_ranks_train, args=(2, tmp_path / "rendezvous", tmp_path), nprocs=2, join=True)
    two = torch.load(tmp_path / "two-ranks.pt", weights_only=True)
    one = Trainer(_config(tmp_path, "one-process", batch_size=4))
    one.build_index()
    records = _record([one.train_step() for _ in range(STEPS)])

    ranks = two["ranks"]
    for step in range(STEPS):
        assert sum(r["reader_loss"][step] for r in ranks) / 2 == pytest.approx(records["reader_loss"][step], rel=1e-5)
        if step > 0:
            mean = sum(r["retriever_loss"][step] for r in ranks) / 2
            assert mean == pytest.approx(records["retriever_loss"][step], rel=1e-4)
    assert ranks[0]["grad_norm"] == pytest.approx(records["grad_norm"], rel=1e-4)  # the global norm, every rank
    weights = one.model.state_dict()
    assert two["weights"].keys() == weights.keys()
    config = one.config
    for name, value in weights.items():  # within AdamW's ±lr per step on last-bit differences (see the DDP test)
        lr = config.reader_lr if name.startswith("reader.") else config.retriever_lr
        assert (two["weights"][name].double() - value.double()).abs().max() <= 2 * lr * STEPS, name

    # 2 ranks → 1 process: the same weights and AdamW moments, bit for bit, and training goes on.
    checkpoint_3 = tmp_path / "two-ranks" / f"checkpoint-{STEPS}"
    single = Trainer(_config(tmp_path, "two-ranks", batch_size=4))
    assert not single.sharded and single.resume(checkpoint_3) and single.step == STEPS
    assert all(torch.equal(value, two["weights"][name]) for name, value in single.model.state_dict().items())
    moments = _optimizer_moments(single)
    assert moments.keys() == two["moments"].keys()
    assert all(torch.equal(value, two["moments"][name]) for name, value in moments.items())
    assert single.train_step()["step"] == STEPS + 1

    # `atlas-fast evaluate` of the sharded checkpoint, in one process: the two ranks' recall.
    paths = [
        f"{key}={json.dumps(getattr(config, key))}" for key in ("passages", "train_data", "eval_data", "retriever_path")
    ]
    evaluated = evaluate_checkpoint(checkpoint_3, paths)
    for key, value in two["recall"].items():
        assert evaluated[key] == pytest.approx(value), key

    # A corrupted shard: no resume reads it; the error names the file.
    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "two-ranks", damaged)
    shard = damaged / f"checkpoint-{STEPS}" / checkpoint.MODEL_DIR / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match=r"__1_0\.distcp: checksum mismatch"):
        checkpoint.latest_checkpoint(damaged)


def _two_ranks_resume(rank, world_size, rendezvous, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        trainer = Trainer(_config(tmp_path, "one-process", batch_size=2, gradient_checkpointing=True))
        assert trainer.sharded and trainer.resume() and trainer.step == STEPS
        weights = full_state_dict(trainer.model)
        moments = _optimizer_moments(trainer)
        record = trainer.train_step()
        ranks = [None] * world_size
        dist.all_gather_object(ranks, (record["reader_loss"], record["retriever_loss"], record["grad_norm"]))
        if rank == 0:
            torch.save({"weights": weights, "moments": moments, "ranks": ranks}, tmp_path / "resumed.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_a_one_process_fsdp_checkpoint_resumes_sharded_on_two_ranks(tmp_path):
    write_tiny_bert(tmp_path / "bert-no-dropout", dropout=0.0)
    # Gradient checkpointing recomputes each block's forward in backward: it must compose with FSDP's units.
    one = Trainer(_config(tmp_path, "one-process", batch_size=4, gradient_checkpointing=True))
    one.build_index()
    for _ in range(STEPS):
        one.train_step()
    one.save_checkpoint()
    mp.spawn(_two_ranks_resume, args=(2, tmp_path / "rendezvous", tmp_path), nprocs=2, join=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    weights = one.model.state_dict()
    assert all(torch.equal(resumed["weights"][name], value) for name, value in weights.items())
    moments = _optimizer_moments(one)
    assert all(torch.equal(resumed["moments"][name], value) for name, value in moments.items())
    # The next step, sharded on two ranks, is the one process's next step.
    record = one.train_step()
    reader_losses, retriever_losses, grad_norms = zip(*resumed["ranks"], strict=True)
    assert sum(reader_losses) / 2 == pytest.approx(record["reader_loss"], rel=1e-5)
    assert sum(retriever_losses) / 2 == pytest.approx(record["retriever_loss"], rel=1e-4)
    assert grad_norms[0] == pytest.approx(record["grad_norm"], rel=1e-4)
