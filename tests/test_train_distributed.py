"""The trainer on 2 gloo ranks: sharded index, averaged gradients, collective checkpoints."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from atlas_fast.index import ShardedIndex
from atlas_fast.train import Trainer
from atlas_fast.train.tiny import tiny_config

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _train_on_two_ranks(rank, world_size, rendezvous, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        trainer = Trainer(tiny_config(tmp_path, refresh="incremental", refresh_budget=8))
        assert isinstance(trainer.index, ShardedIndex)
        trainer.build_index()
        assert len(trainer.index) == len(trainer.passages)
        for _ in range(2):
            record = trainer.train_step()
        assert record["documents_reembedded"] == 8  # each rank refreshes 8 of its own shard
        # Averaged gradients keep the replicas identical.
        checksum = torch.stack([p.detach().double().sum() for p in trainer.reader.parameters()]).sum()
        gathered = [torch.zeros_like(checksum) for _ in range(world_size)]
        dist.all_gather(gathered, checksum)
        assert gathered[0].item() == gathered[1].item()
        trainer.save_checkpoint()
        metrics = trainer.evaluator(generate=True)
        assert 0.0 <= metrics["recall@1"] <= 1.0
        assert metrics["generated"] == 8  # 4 eval examples per rank, combined
        resumed = Trainer(tiny_config(tmp_path, refresh="incremental", refresh_budget=8))
        assert resumed.resume()
        assert resumed.step == 2 and len(resumed.index) == len(trainer.passages)
    finally:
        dist.destroy_process_group()


def test_two_rank_training(tmp_path):
    tiny_config(tmp_path)  # write the corpus and the model once, before the ranks start
    mp.spawn(_train_on_two_ranks, args=(2, tmp_path / "rendezvous", tmp_path), nprocs=2, join=True)
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoint-2"
