"""Pure-PyTorch references: the CPU fallback, the test oracle and the benchmark baseline."""

from atlas_fast.reference.gold_scores import adist_gold_scores_ref, token_logprobs_naive, token_logprobs_ref
from atlas_fast.reference.losses import emdr_loss_ref, kldivloss_ref, retriever_scores_ref

__all__ = [
    "adist_gold_scores_ref",
    "emdr_loss_ref",
    "kldivloss_ref",
    "retriever_scores_ref",
    "token_logprobs_naive",
    "token_logprobs_ref",
]
