"""Drop-in replacements for Atlas's retriever losses (facebookresearch/atlas, src/atlas.py).

    loss = atlas_fast.losses.kldivloss(score, gold_score)  # Atlas: self.kldivloss(score, gold_score)
    loss = atlas_fast.losses.emdr_loss(score, token_logprobs, labels)  # Atlas: self.logprob(...)

Each call validates its arguments (ValueError naming the argument), then runs
the Triton kernel, as a registered op (atlas_fast.ops: torch.ops.atlas_fast.kldivloss,
.emdr_loss), on CUDA tensors (and on CPU under TRITON_INTERPRET=1) or the PyTorch
reference otherwise; ATLAS_FAST_BACKEND=reference|triton forces one.
Losses are computed in float32 whatever the input dtype and returned in float32
(float64 inputs stay float64 and always use the reference). Gradients flow to
the retriever scores only: gold scores and token log-probabilities are
constants, as in Atlas, and passing ones that require grad is an error.

A passage mask (B, K) drops padded passages from both softmaxes and from every
count; a row whose mask excludes every passage contributes 0 and is excluded
from the means; a loss with nothing to average is 0, never NaN.

The gold scores that feed these losses (`pdist_gold_scores`, `emdr_token_logprobs`,
`adist_gold_scores`, `loop_gold_scores`) live here, their one public home (atlas_fast._gold_scores).
"""

from __future__ import annotations

import torch
from torch import nn

from atlas_fast import _dispatch, _validation, ops
from atlas_fast._gold_scores import (
    adist_gold_scores,
    emdr_token_logprobs,
    loop_gold_scores,
    pdist_gold_scores,
    t5_lm_head_scale,
)
from atlas_fast.reference.losses import (
    EMDR_LOSS_MAX_K,
    KLDIVLOSS_MAX_K,
    emdr_loss_ref,
    kldivloss_ref,
    retriever_scores_ref,
)

__all__ = [
    "EMDRLoss",
    "KLDivLoss",
    "adist_gold_scores",
    "emdr_loss",
    "emdr_token_logprobs",
    "kldivloss",
    "loop_gold_scores",
    "pdist_gold_scores",
    "retriever_scores",
    "t5_lm_head_scale",
]

# Largest K the kernels hold in registers (atlas_fast/kernels/kldivloss.py and atlas_fast/kernels/emdr_loss.py);
# kept here so that dispatch does not import Triton to read it.


def _kernel_limit(K: int, max_k: int) -> str | None:
    if K > max_k:
        return f"K = {K} exceeds the kernel's limit of {max_k} passages per row"
    return None


def retriever_scores(query_emb: torch.Tensor, passage_emb: torch.Tensor) -> torch.Tensor:
    """Atlas's retriever score q·p/√d (one batched matmul; no kernel needed).

    Args:
        query_emb: (B, d).
        passage_emb: (B, K, d), same dtype and device.

    Returns:
        (B, K) scores.
    """
    _validation.float_tensor("query_emb", query_emb, 2)
    _validation.float_tensor("passage_emb", passage_emb, 3)
    B, d = query_emb.shape
    if passage_emb.shape[0] != B or passage_emb.shape[2] != d:
        raise ValueError(f"passage_emb must have shape (B, K, d) with B={B}, d={d}; got {tuple(passage_emb.shape)}")
    if passage_emb.dtype != query_emb.dtype:
        raise ValueError(f"passage_emb dtype {passage_emb.dtype} must match query_emb dtype {query_emb.dtype}")
    _validation.same_device(query_emb=query_emb, passage_emb=passage_emb)
    return retriever_scores_ref(query_emb, passage_emb)


def kldivloss(
    scores: torch.Tensor,
    gold_scores: torch.Tensor,
    temperature_score: float = 0.01,
    temperature_gold: float = 0.01,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """KL(softmax(gold/τ_g) ‖ softmax(scores/τ_s)) over the K passages: Atlas's `kldivloss`.

    Equals ``torch.nn.KLDivLoss()(log_softmax(scores/τ_s), softmax(gold_scores/τ_g))``
    for the default reduction "mean", which divides by B·K (valid elements with a mask).

    Args:
        scores: (B, K) retriever scores, float16/bfloat16/float32/float64; gets the gradient.
        gold_scores: (B, K) targets from the reader (PDist, ADist, LOOP), constants.
        temperature_score: τ_s > 0 (Atlas default 0.01).
        temperature_gold: τ_g > 0 (Atlas default 0.01).
        mask: optional (B, K) bool, True = a real passage.
        reduction: "mean" | "batchmean" (÷ rows with a passage) | "sum" | "none" → (B, K).

    Returns:
        float32 scalar, or (B, K) for reduction="none"; 0 when K = 0.
    """
    _validation.float_tensor("scores", scores, 2)
    _validation.float_tensor("gold_scores", gold_scores, 2)
    _validation.shape("gold_scores", gold_scores, tuple(scores.shape), "(B, K) like scores")
    _validation.mask(mask, tuple(scores.shape))
    _validation.same_device(scores=scores, gold_scores=gold_scores, mask=mask)
    temperature_score = _validation.temperature("temperature_score", temperature_score)
    temperature_gold = _validation.temperature("temperature_gold", temperature_gold)
    _validation.reduction(reduction)
    _validation.constant("gold_scores", gold_scores)
    _validation.finite("scores", scores, divided_by=("temperature_score", temperature_score))
    _validation.finite("gold_scores", gold_scores, divided_by=("temperature_gold", temperature_gold))
    if scores.shape[1] == 0:  # no passage: as a fully masked row, every row contributes 0
        empty = scores.float() * 0.0  # (B, 0), connected to scores for autograd
        return empty if reduction == "none" else empty.sum()
    unsupported = _kernel_limit(scores.shape[1], KLDIVLOSS_MAX_K)
    if _dispatch.choose_backend("kldivloss", scores.device, unsupported, scores.dtype) == "triton":
        return ops.kldivloss(scores, gold_scores, temperature_score, temperature_gold, mask, reduction)
    return kldivloss_ref(scores, gold_scores, temperature_score, temperature_gold, mask, reduction)


def emdr_loss(
    scores: torch.Tensor,
    token_logprobs: torch.Tensor,
    labels: torch.Tensor,
    temperature_score: float = 0.01,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """EMDR²: −mean over valid target tokens of logsumexp_k(ℓ + log_softmax_k(scores/τ_s)).

    Atlas's `logprob` loss once the gold side is reduced to per-token
    log-probabilities ℓ = log_softmax(logits/τ_g)[label] (atlas_fast computes
    those without materialising logits: ``emdr_token_logprobs``).

    Args:
        scores: (B, K) retriever scores; gets the gradient.
        token_logprobs: (B, K, T) log-probability of target token t given passage k, constants.
        labels: (B, T) int64/int32 target ids, -100 = padding (left out of the mean).
        temperature_score: τ_s > 0.
        mask: optional (B, K) bool, True = a real passage.

    Returns:
        float32 scalar; 0 when K = 0.
    """
    _validation.float_tensor("scores", scores, 2)
    _validation.float_tensor("token_logprobs", token_logprobs, 3)
    B, K = scores.shape
    _validation.shape("token_logprobs", token_logprobs, (B, K, token_logprobs.shape[2]), "(B, K, T)")
    _validation.labels(labels, (B, token_logprobs.shape[2]))
    _validation.mask(mask, (B, K))
    _validation.same_device(scores=scores, token_logprobs=token_logprobs, labels=labels, mask=mask)
    temperature_score = _validation.temperature("temperature_score", temperature_score)
    _validation.constant("token_logprobs", token_logprobs)
    _validation.finite("scores", scores, divided_by=("temperature_score", temperature_score))
    _validation.finite("token_logprobs", token_logprobs)
    if K == 0:  # no passage: nothing to marginalise, 0 as kldivloss gives (the gradient is empty)
        return scores.sum(dtype=torch.float32) * 0.0
    unsupported = _kernel_limit(K, EMDR_LOSS_MAX_K)
    if _dispatch.choose_backend("emdr_loss", scores.device, unsupported, scores.dtype) == "triton":
        return ops.emdr_loss(scores, token_logprobs, labels, temperature_score, mask)
    return emdr_loss_ref(scores, token_logprobs, labels, temperature_score, mask)


class KLDivLoss(nn.Module):
    """nn.Module form of `kldivloss` holding the temperatures and the reduction.

    ``forward(scores (B, K), gold_scores (B, K), mask=None)`` → loss.
    """

    def __init__(self, temperature_score: float = 0.01, temperature_gold: float = 0.01, reduction: str = "mean"):
        super().__init__()
        self.temperature_score = _validation.temperature("temperature_score", temperature_score)
        self.temperature_gold = _validation.temperature("temperature_gold", temperature_gold)
        self.reduction = _validation.reduction(reduction)

    def forward(
        self, scores: torch.Tensor, gold_scores: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return kldivloss(scores, gold_scores, self.temperature_score, self.temperature_gold, mask, self.reduction)

    def extra_repr(self) -> str:
        return f"temperature_score={self.temperature_score}, temperature_gold={self.temperature_gold}, " + (
            f"reduction={self.reduction!r}"
        )


class EMDRLoss(nn.Module):
    """nn.Module form of `emdr_loss` holding τ_s.

    ``forward(scores (B, K), token_logprobs (B, K, T), labels (B, T), mask=None)`` → loss.
    """

    def __init__(self, temperature_score: float = 0.01):
        super().__init__()
        self.temperature_score = _validation.temperature("temperature_score", temperature_score)

    def forward(
        self,
        scores: torch.Tensor,
        token_logprobs: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return emdr_loss(scores, token_logprobs, labels, self.temperature_score, mask)

    def extra_repr(self) -> str:
        return f"temperature_score={self.temperature_score}"
