"""Sharded checkpoints (torch.distributed.checkpoint) in one process: exact round trip, and no code from a stranger's
metadata. The 2-rank training, resharding and corruption tests are in test_train_fsdp.py."""

import os
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp

from atlas_fast.testing.tiny import write_tiny_bert
from atlas_fast.train.checkpoint import CheckpointError
from atlas_fast.train.config import ConfigError, TrainConfig
from atlas_fast.train.sharded_checkpoint import load_shards, state_dicts, write_shards
from atlas_fast.train.sharding import gathered, transformer_blocks


def _trained(seed: int, lr: float = 1e-2) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2), torch.nn.Linear(2, 2))
    optimizer = torch.optim.AdamW(model[:3].parameters(), lr=lr)  # model[3]: no optimizer state, as BERT's pooler
    for _ in range(2):
        model(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def test_shards_round_trip_weights_moments_and_param_groups_exactly(tmp_path):
    model, optimizer = _trained(0)
    tensors, param_groups = state_dicts(model, optimizer)
    write_shards(tensors, tmp_path / "model")
    fresh, fresh_optimizer = _trained(1, lr=5.0)
    load_shards(tmp_path / "model", fresh, fresh_optimizer, param_groups)
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    loaded, saved = fresh_optimizer.state_dict(), optimizer.state_dict()
    assert loaded["param_groups"][0]["lr"] == 1e-2
    assert loaded["state"].keys() == saved["state"].keys()
    for index, moments in saved["state"].items():
        for key, value in moments.items():
            assert torch.equal(loaded["state"][index][key], value), (index, key)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_metadata_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    model, optimizer = _trained(0)
    tensors, param_groups = state_dicts(model, optimizer)
    write_shards(tensors, tmp_path / "model")
    (tmp_path / "model" / ".metadata").write_bytes(pickle.dumps(_RunsCode()))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"model: the model shards do not load .*posix.system is not part of"):
        load_shards(tmp_path / "model", model, optimizer, param_groups)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP assumes one process: so it is
def test_a_non_tensor_entry_is_refused(tmp_path):
    # DCP would unpickle a non-tensor value in full (weights_only=False); atlas_fast never writes one.
    model, optimizer = _trained(0)
    tensors, param_groups = state_dicts(model, optimizer)
    dcp.save({**tensors, "note": {"any": "object"}}, checkpoint_id=tmp_path / "model", no_dist=True)
    with pytest.raises(CheckpointError, match=r"BytesStorageMetadata is not part of"):
        load_shards(tmp_path / "model", model, optimizer, param_groups)


def test_a_shard_of_another_model_is_refused_with_the_tensor_named(tmp_path):
    model, optimizer = _trained(0)
    tensors, param_groups = state_dicts(model, optimizer)
    write_shards(tensors, tmp_path / "model")
    other = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3), torch.nn.Linear(3, 2))
    with pytest.raises(CheckpointError, match=r"the model shards do not load .*2\.weight"):
        load_shards(tmp_path / "model", other, torch.optim.AdamW(other.parameters()), param_groups)


def test_every_transformer_layer_is_its_own_unit_and_an_unsharded_model_gathers_for_free(tmp_path):
    from transformers import AutoModel

    write_tiny_bert(tmp_path / "bert")
    bert = AutoModel.from_pretrained(tmp_path / "bert")
    assert transformer_blocks(bert) == list(bert.encoder.layer)
    with gathered(bert):  # not sharded: nothing to gather, the forward runs as it is
        assert bert(torch.ones(1, 4, dtype=torch.long)).last_hidden_state.shape[:2] == (1, 4)


def test_parallel_must_be_ddp_or_fsdp():
    assert TrainConfig().parallel == "ddp"
    with pytest.raises(ConfigError, match="parallel must be one of ddp, fsdp; got 'zero3'"):
        TrainConfig(parallel="zero3")
