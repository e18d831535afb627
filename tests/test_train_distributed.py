"""The trainer on 2 gloo ranks: DDP over the joint model, sharded index, collective checkpoints.

Two ranks with batch_size B train exactly what one process trains with batch_size 2B: the same
examples per step, the same losses, the same gradients (DDP averages them) and the same weights.
The tiny models here have no dropout, so both runs are deterministic.
"""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from atlas_fast.index import ShardedIndex
from atlas_fast.testing.tiny import data_parallel_config, write_tiny_bert
from atlas_fast.train import Trainer, checkpoint
from atlas_fast.train.run import evaluate_checkpoint

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS = 3


def _config(tmp_path, output, batch_size):
    # The retriever's parameters unused in the warm-up step: DDP's find_unused_parameters path.
    return data_parallel_config(tmp_path, output, batch_size)


def _train(trainer) -> dict:
    trainer.build_index()
    records = [trainer.train_step() for _ in range(STEPS)]
    return {
        "reader_loss": [r["reader_loss"] for r in records],
        "retriever_loss": [r["retriever_loss"] for r in records],
        "grad_norm": [r["grad_norm"] for r in records],
        "examples": [[e.id for e in trainer.micro_batch(i)] for i in range(STEPS)],
        "weights": {
            **{f"reader.{k}": v for k, v in trainer.reader.state_dict().items()},
            **{f"retriever.{k}": v for k, v in trainer.retriever.state_dict().items()},
        },
    }


def _train_on_two_ranks(rank, world_size, rendezvous, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        trainer = Trainer(_config(tmp_path, "two-ranks", batch_size=2))
        assert isinstance(trainer.index, ShardedIndex)
        result = _train(trainer)
        assert len(trainer.index) == len(trainer.passages)
        metrics = trainer.evaluator(generate=True)
        assert metrics["generated"] == 8  # 4 eval examples per rank, combined
        leftover = trainer.output_dir / f".{checkpoint.INDEX_FILE}-{STEPS}" / "shard-00002.afi"
        if rank == 0:  # what a crashed 3-rank save of this step left behind must not join this checkpoint
            leftover.parent.mkdir()
            leftover.write_bytes(b"not an index")
        dist.barrier()
        saved = trainer.save_checkpoint()
        assert rank != 0 or not (saved / checkpoint.INDEX_FILE / leftover.name).exists()
        resumed = Trainer(_config(tmp_path, "two-ranks", batch_size=2))
        assert resumed.resume() and resumed.step == STEPS and len(resumed.index) == len(trainer.passages)
        # Each rank's losses; the run's loss is their mean (equal shares, equal target lengths).
        gathered = [None] * world_size
        dist.all_gather_object(gathered, {k: result[k] for k in ("reader_loss", "retriever_loss", "examples")})
        if rank == 0:
            torch.save(
                {
                    "ranks": gathered,
                    "grad_norm": result["grad_norm"],
                    "weights": result["weights"],
                    "recall": {k: v for k, v in metrics.items() if k.startswith("recall@")},
                },
                tmp_path / "two-ranks.pt",
            )
        dist.barrier()  # no rank tears the group down while another still talks to it
    finally:
        dist.destroy_process_group()


def test_two_ranks_train_what_one_process_trains_with_the_global_batch(tmp_path):
    write_tiny_bert(tmp_path / "bert-no-dropout", dropout=0.0)
    _config(tmp_path, "one-process", 4)  # write the corpus once, before the ranks start
    mp.spawn(_train_on_two_ranks, args=(2, tmp_path / "rendezvous", tmp_path), nprocs=2, join=True)
    two = torch.load(tmp_path / "two-ranks.pt", weights_only=True)
    one = _train(Trainer(_config(tmp_path, "one-process", batch_size=4)))

    ranks = two["ranks"]
    for step in range(STEPS):  # the two ranks' shares make up the one process's batch
        assert sorted(ranks[0]["examples"][step] + ranks[1]["examples"][step]) == sorted(one["examples"][step])
        mean = sum(r["reader_loss"][step] for r in ranks) / 2
        assert mean == pytest.approx(one["reader_loss"][step], rel=1e-5)
        if step == 0:
            assert one["retriever_loss"][step] is None and ranks[0]["retriever_loss"][step] is None
        else:
            mean = sum(r["retriever_loss"][step] for r in ranks) / 2
            assert mean == pytest.approx(one["retriever_loss"][step], rel=1e-4)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)  # DDP's averaged gradients
    assert two["weights"].keys() == one["weights"].keys()
    # AdamW normalises each gradient element by its own magnitude, so an element whose gradient is ~0 can
    # move by up to ±lr a step on a last-bit difference of summation order (2 ranks vs 1 process). Every
    # element must stay within that bound, and nearly all within float tolerance.
    config = _config(tmp_path, "one-process", 4)
    close = total = 0
    for name, value in one["weights"].items():
        lr = config.reader_lr if name.startswith("reader.") else config.retriever_lr
        difference = (two["weights"][name].double() - value.double()).abs()
        assert difference.max() <= 2 * lr * STEPS, name
        close += int((difference <= 1e-5 + 1e-4 * value.double().abs()).sum())
        total += value.numel()
    assert close / total >= 0.999, f"{total - close} of {total} weights differ beyond float tolerance"
    # The sharded checkpoint evaluates in one process (its shards read into one index) to the same recall.
    paths = [
        f"{key}={json.dumps(getattr(config, key))}" for key in ("passages", "train_data", "eval_data", "retriever_path")
    ]
    single = evaluate_checkpoint(tmp_path / "two-ranks" / f"checkpoint-{STEPS}", paths)
    for key, value in two["recall"].items():
        assert single[key] == pytest.approx(value), key
