"""LOOP gold scores: the reader's target NLL with each passage left out, K passes batched into one.

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

from atlas_fast import _validation
from atlas_fast.t5_fid import cross_attention_modules

__all__ = ["loop_gold_scores"]


class _Projected(nn.Module):
    """Stands in for a cross-attention k or v projection: returns precomputed, batch-expanded states."""

    def __init__(self, states: torch.Tensor):
        super().__init__()
        self.states = states

    def forward(self, _encoder_states: torch.Tensor) -> torch.Tensor:
        return self.states


@contextlib.contextmanager
def _cached_cross_projections(model, example_states: torch.Tensor, copies: int):
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


def loop_gold_scores(
    model,
    encoder_states: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    n_passages: int,
    passes_per_batch: int | None = None,
) -> torch.Tensor:
    """LOOP: +mean NLL over valid target tokens with passage k masked out, for every k.

    Equals Atlas's `loop_score` given the same encoder states. Runs under no_grad with
    the model as it is (Atlas puts the reader in eval mode first).

    Args:
        model: a T5ForConditionalGeneration or a BERT-decoder EncoderDecoderModel (patched for FiD or not).
        encoder_states: (B, K·L, H) the K passages of each example, encoded once and concatenated.
        attention_mask: (B, K·L), True/1 = a real token.
        labels: (B, T), -100 = padding; every row needs a valid token.
        n_passages: K.
        passes_per_batch: leave-one-out copies per decoder batch (memory grows with it); default K.

    Returns:
        (B, K) float32.
    """
    _validation.float_tensor("encoder_states", encoder_states, 3)
    B, KL, _ = encoder_states.shape
    if isinstance(n_passages, bool) or not isinstance(n_passages, int) or n_passages <= 0 or KL % n_passages:
        raise ValueError(f"n_passages must be a positive integer dividing K·L = {KL}; got {n_passages!r}")
    _validation.shape("attention_mask", attention_mask, (B, KL), "(B, K·L)")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
        raise ValueError("labels must be a (B, T) integer tensor")
    _validation.labels(labels, (B, labels.shape[1]))
    _validation.every_row_has_a_target(labels)
    per_batch = n_passages if passes_per_batch is None else passes_per_batch
    if isinstance(per_batch, bool) or not isinstance(per_batch, int) or per_batch <= 0:
        raise ValueError(f"passes_per_batch must be a positive integer; got {passes_per_batch!r}")
    from transformers.modeling_outputs import BaseModelOutput

    L = KL // n_passages
    passage_of_key = torch.arange(KL, device=attention_mask.device) // L
    valid_tokens = (labels != -100).sum(-1)
    scores = []
    with torch.no_grad():
        for b in range(B):
            example_states = encoder_states[b : b + 1]
            example_scores = []
            for first in range(0, n_passages, per_batch):
                left_out = torch.arange(first, min(first + per_batch, n_passages), device=attention_mask.device)
                copies = left_out.numel()
                # (copies, K·L): copy c masks the keys of passage left_out[c].
                masks = attention_mask[b].bool()[None, :] & (passage_of_key[None, :] != left_out[:, None])
                copy_labels = labels[b : b + 1].expand(copies, -1).contiguous()
                with _cached_cross_projections(model, example_states, copies):
                    logits = model(
                        encoder_outputs=BaseModelOutput(last_hidden_state=example_states.expand(copies, -1, -1)),
                        attention_mask=masks,
                        decoder_input_ids=model.prepare_decoder_input_ids_from_labels(copy_labels),
                        use_cache=False,
                    ).logits
                token_nll = nn.functional.cross_entropy(
                    logits.float().flatten(0, 1), copy_labels.flatten(), reduction="none"
                )
                example_scores.append(token_nll.view(copies, -1).sum(-1) / valid_tokens[b])
            scores.append(torch.cat(example_scores))
    return torch.stack(scores)
