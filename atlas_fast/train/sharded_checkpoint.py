"""The model and optimizer state of a checkpoint as shards: torch.distributed.checkpoint (DCP), without pickle.

A run with ``parallel = "fsdp"`` writes its models' parameters and AdamW's moments into the
checkpoint's ``model/`` folder through DCP: every rank writes its own shards, in parallel, and a
``.metadata`` file says which slice of which tensor each file holds. Reading goes through the
same metadata, so a checkpoint loads on any world size (2 ranks → 1 process, 1 → 2) and into a
model that is not sharded at all (``atlas-fast evaluate`` in one process). The optimizer's
param_groups (learning rates, betas: no tensors) travel in ``state.pt`` instead, so that the
shards hold tensors only.

DCP pickles its ``.metadata``; `TensorShardReader` reads it with an unpickler that builds only
DCP's metadata classes for tensors and refuses anything else, non-tensor entries included (DCP
would unpickle those in full), so a checkpoint from a stranger cannot run code. Integrity is the
checkpoint manifest's job (train/checkpoint.py): every shard is hashed there.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import CheckpointException, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from atlas_fast.train.checkpoint import CheckpointError

__all__ = ["TensorShardReader", "load_shards", "state_dicts", "write_shards"]

# The globals a DCP .metadata pickle of tensors names (torch 2.4 to 2.13), and nothing else.
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in _METADATA_GLOBALS or dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a tensor checkpoint's metadata")


class TensorShardReader(FileSystemReader):
    """DCP's file reader, reading ``.metadata`` with an allow-list unpickler and tensors only.

    Raises:
        ValueError: the metadata names a class outside DCP's metadata for tensors (a non-tensor entry's
            BytesStorageMetadata included).
    """

    def read_metadata(self, *args, **kwargs) -> Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as file:
                metadata = _MetadataUnpickler(file).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError) as error:
            raise ValueError(f"{path}: not a tensor checkpoint's metadata ({error})") from error
        if not isinstance(metadata, Metadata):
            raise ValueError(f"{path}: holds a {type(metadata).__name__}, not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, list[dict]]:
    """(tensors, param_groups): the model's parameters and the optimizer's per-parameter state, by parameter
    name, as this rank's shards (DTensors when sharded, whole tensors when not); and the optimizer's
    param_groups, which hold no tensors. A collective when the model is sharded."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state["state"]}, optimizer_state["param_groups"]


def write_shards(tensors: dict, directory: str | os.PathLike) -> None:
    """Write `state_dicts`'s tensors under ``directory``: every rank its own shards (a collective)."""
    with _one_process_is_meant():
        dcp.save(tensors, storage_writer=FileSystemWriter(directory), no_dist=not dist.is_initialized())


def load_shards(
    directory: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, param_groups: list[dict]
) -> None:
    """Load the shards under ``directory`` into ``model`` and ``optimizer``, whatever world size wrote them.

    Raises:
        CheckpointError: the metadata is not a tensor checkpoint's (see `TensorShardReader`), a shard does not
            read, or a tensor is missing or shaped unlike the model's.
    """
    tensors, _ = state_dicts(model, optimizer)
    reader = TensorShardReader(directory)
    try:
        # A parameter that never had a gradient (BERT's unused pooler) has no optimizer state to load.
        saved = reader.read_metadata().state_dict_metadata
        tensors["optimizer"] = {
            name: kept
            for name, moments in tensors["optimizer"].items()
            if (kept := {key: value for key, value in moments.items() if f"optimizer.{name}.{key}" in saved})
        }
        with _one_process_is_meant():
            dcp.load(tensors, storage_reader=reader, no_dist=not dist.is_initialized())
    except (CheckpointException, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{directory}: the model shards do not load ({_first_line(error)})") from error
    set_state_dict(
        model,
        optimizer,
        model_state_dict=tensors["model"],
        optim_state_dict={"state": tensors["optimizer"], "param_groups": param_groups},
        options=StateDictOptions(strict=False),  # the parameters without optimizer state (above)
    )


@contextlib.contextmanager
def _one_process_is_meant() -> Iterator[None]:
    """DCP warns that it assumes one process when torch.distributed is not initialised: that is what we ask."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _first_line(error: Exception) -> str:
    """DCP reports each rank's traceback; the last line of the first one names the cause."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith((" ", "Traceback", "CheckpointException"))]
    return (causes or lines or [type(error).__name__])[-1].strip()
