"""FSDP2 for the joint model (``parallel = "fsdp"``): parameters, gradients and optimizer state sharded over ranks.

Each transformer block of the retriever and the reader is its own FSDP unit (its parameters are
all-gathered just before its forward and freed after it); the joint model is the root unit and
holds the rest (embeddings, final norms). Training runs through ``JointModel.forward``, where
FSDP's hooks do all of that. The passes outside it (query encoding for retrieval, the refresh
policy's re-embedding, the warm-up's cached encoder states, evaluation) call model methods that
are not ``forward`` and, on each rank, a different number of times (each rank embeds its own
documents); `gathered` all-gathers the weights they need once for the whole pass instead, so that
nothing in the pass is a collective.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

__all__ = ["full_state_dict", "gathered", "shard_joint_model", "transformer_blocks"]


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The elements of every ``nn.ModuleList`` in ``model``: the layers of a Hugging Face model (BERT's
    ``encoder.layer``, T5's ``block``), each one FSDP unit. A module shared by two owners counts once."""
    blocks: dict[int, nn.Module] = {}
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            blocks.update((id(block), block) for block in module)
    return list(blocks.values())


def shard_joint_model(model: nn.Module, precision: str) -> None:
    """Shard ``model`` in place over the default process group: one FSDP unit per transformer block, the
    model itself the root. ``precision`` "bf16" computes in bfloat16 and reduces gradients in float32."""
    if precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    for block in transformer_blocks(model):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


@contextlib.contextmanager
def gathered(model: nn.Module, *parts: nn.Module) -> Iterator[None]:
    """Hold the full weights of ``parts`` (default: all of ``model``) for a pass outside ``model.forward``.

    Every rank must enter it together (the all-gathers are collectives); inside, forwards are local.
    Nested entries hold what the outermost gathered. A model that is not sharded enters at no cost.
    """
    if not isinstance(model, FSDPModule) or getattr(model, "_atlas_gathered", False):
        yield
        return
    # FSDP names its root on the first forward it sees; a block's forward seen first here would be taken for
    # the root. Initialising from the joint model settles it (FSDP has no public call for this).
    model._get_fsdp_state()._lazy_init()
    units = [model]
    for part in parts or (model,):
        units += [unit for unit in part.modules() if isinstance(unit, FSDPModule) and unit is not model]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    model._atlas_gathered = True
    try:
        yield
    finally:
        model._atlas_gathered = False
        for unit in units:
            unit.set_reshard_after_forward(True, recurse=False)
            unit.reshard()


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with whole tensors on the CPU: sharded parameters are gathered (a collective)."""
    if not any(isinstance(unit, FSDPModule) for unit in module.modules()):
        return module.state_dict()
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
