"""The reader's judgement of each retrieved passage: gold scores for the retriever loss.

All modes run the reader in eval mode under no_grad, as Atlas does. Inputs are the
reader's tokenised passages; encoder states may be passed in when the caller already
has them (FiD encodes each passage independently, so the same states serve the
single-passage passes of PDist/EMDR² and the full FiD passes of ADist/LOOP).
"""

from __future__ import annotations

import torch

from atlas_fast.gold_scores import adist_gold_scores, emdr_token_logprobs, pdist_gold_scores
from atlas_fast.loop import loop_gold_scores
from atlas_fast.models.modes import eval_mode
from atlas_fast.models.reader import FiDReader

__all__ = ["reader_gold_scores"]


def reader_gold_scores(
    reader: FiDReader,
    mode: str,
    states: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    n_passages: int,
    temperature_gold: float = 0.01,
) -> torch.Tensor:
    """Gold scores of the K passages of each example.

    Args:
        mode: "pdist", "adist", "loop" or "emdr".
        states: (B, K·L, H) FiD encoder states (eval mode, no grad); attention_mask (B, K·L).
        labels: (B, T), -100 = padding.
        n_passages: K.

    Returns:
        (B, K) float32 for pdist/adist/loop; (B, K, T) token log-probabilities for emdr.
    """
    B, KL, H = states.shape
    K = n_passages
    with eval_mode(reader), torch.no_grad():
        if mode == "loop":
            return loop_gold_scores(reader.model, states, attention_mask, labels, K)
        if mode == "adist":
            reader.fid.collect_mass = True
            try:
                reader.decoder_hidden(states, attention_mask, reader.shift_labels(labels), K)
                return adist_gold_scores(reader.fid.passage_mass(), labels, reader.n_decoder_layers)
            finally:
                reader.fid.collect_mass = False
        # PDist and EMDR²: each passage alone with the query, a batch of B·K.
        single_labels = labels.repeat_interleave(K, dim=0)
        hidden = reader.decoder_hidden(
            states.reshape(B * K, KL // K, H),
            attention_mask.reshape(B * K, KL // K),
            reader.shift_labels(single_labels),
            1,
        )
        features, weight = reader.lm_head_features(hidden.view(B, K, *hidden.shape[1:]))
        if mode == "pdist":
            return pdist_gold_scores(features.float(), weight.float(), labels)
        return emdr_token_logprobs(features.float(), weight.float(), labels, temperature_gold)
