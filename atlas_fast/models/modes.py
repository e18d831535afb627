"""Temporarily switching a model to eval mode, as Atlas does for retrieval, gold scores and evaluation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode", "set_training"]


def set_training(module: nn.Module, mode: bool) -> None:
    """``module.train(mode)`` without the subclasses' overrides: Hugging Face's PreTrainedModel.train (transformers
    >= 5.25) consults its kernel hub, which torch.compile cannot trace; the flag on every submodule is all that
    dropout and the models read."""
    for submodule in module.modules():
        submodule.training = mode


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode (no dropout) inside the block; every submodule's own previous mode is restored after,
    also on error.

    The submodules are listed on entry and restored from that list: a block that swaps a submodule (LOOP's cached
    cross-attention projections) leaves a pending module mutation in a torch.compile trace, and Dynamo breaks the
    graph rather than walk ``modules()`` over it.
    """
    modules = list(module.modules())
    flags = [submodule.training for submodule in modules]
    for submodule in modules:
        submodule.training = False
    try:
        yield module
    finally:
        for submodule, flag in zip(modules, flags, strict=True):
            submodule.training = flag
