"""LOOP's model surgery: a decoder's cross-attention keys and values projected once per example and
shared by its leave-one-out copies (atlas_fast.losses.loop_gold_scores runs the passes).

Atlas (`loop_score`) encodes once, then runs the decoder K times, each time with
one passage masked out, recomputing every layer's cross-attention key and value
projections of all K·L encoder states on every pass. Here the decoder runs over
a batch of k' leave-one-out copies of one example at once (k' = `passes_per_batch`,
K by default) and each layer's cross-attention keys and values are projected once
per example and broadcast to every copy without copying: the K-fold projection
work, usually the bulk of the decoder's cost when K·L >> T, is done once.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from atlas_fast.fid_patch import cross_attention_modules

__all__ = ["cached_cross_projections"]


class _Projected(nn.Module):
    """Stands in for a cross-attention k or v projection: returns precomputed, batch-expanded states."""

    def __init__(self, states: torch.Tensor):
        super().__init__()
        self.states = states

    def forward(self, _encoder_states: torch.Tensor) -> torch.Tensor:
        return self.states


@contextlib.contextmanager
def cached_cross_projections(model, example_states: torch.Tensor, copies: int):
    """Inside the block, each decoder layer's cross-attention k/v return their projection of one
    example's ``example_states`` (1, K·L, H), computed once and broadcast (a view, no copy) to
    ``copies`` leave-one-out copies."""
    layers = cross_attention_modules(model)
    originals = [(getattr(module, k_name), getattr(module, v_name)) for module, k_name, v_name in layers]
    try:
        for (module, k_name, v_name), (key, value) in zip(layers, originals, strict=True):
            setattr(module, k_name, _Projected(key(example_states).expand(copies, -1, -1)))
            setattr(module, v_name, _Projected(value(example_states).expand(copies, -1, -1)))
        yield
    finally:
        for (module, k_name, v_name), (key, value) in zip(layers, originals, strict=True):
            setattr(module, k_name, key)
            setattr(module, v_name, value)
