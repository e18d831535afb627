"""Retriever losses in plain PyTorch: the CPU path, the test oracle, the benchmark baseline.

The math follows Atlas (facebookresearch/atlas, src/atlas.py) with a passage mask
added: masked passages leave both softmaxes and every count. A row whose mask
excludes every passage contributes 0 and is excluded from the means. All math
is in float32 (float64 stays float64); losses come back in that dtype.

These functions assume validated inputs; atlas_fast.losses validates and dispatches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["EMDR_LOSS_MAX_K", "KLDIVLOSS_MAX_K", "emdr_loss_ref", "kldivloss_ref", "retriever_scores_ref"]

# The largest K the Triton kernels take (atlas_fast/kernels/kldivloss.py and emdr_loss.py): each holds a whole row of K
# in registers, and wider rows spill on sm_80/sm_90 (the compile gate checks it). Kept here, free of Triton, so
# that atlas_fast.losses can route larger K to these references without importing the kernels.
KLDIVLOSS_MAX_K = 8192
EMDR_LOSS_MAX_K = 8192


def retriever_scores_ref(query_emb: torch.Tensor, passage_emb: torch.Tensor) -> torch.Tensor:
    """Atlas's retriever score q·p/√d.

    Args:
        query_emb: (B, d).
        passage_emb: (B, K, d).

    Returns:
        (B, K) scores in the inputs' dtype.
    """
    return torch.einsum("bd,bkd->bk", query_emb, passage_emb) / query_emb.shape[-1] ** 0.5


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _masked_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits with masked passages at -inf, and (B, K) validity (None without a mask).

    A fully masked row gets all-zero logits instead of all -inf so that its
    softmax stays finite; it is invalid everywhere and drops out downstream.
    """
    if mask is None:
        return logits, None
    row_has_passage = mask.any(dim=-1, keepdim=True)
    filler = torch.where(row_has_passage, float("-inf"), 0.0).to(logits.dtype)
    valid = mask & row_has_passage
    return torch.where(mask, logits, filler), valid


def kldivloss_ref(
    scores: torch.Tensor,
    gold_scores: torch.Tensor,
    temperature_score: float = 0.01,
    temperature_gold: float = 0.01,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """KL(softmax(gold/τ_g) ‖ softmax(scores/τ_s)) over the K passages of each query.

    Atlas: ``torch.nn.KLDivLoss()(log_softmax(score/τ_s), softmax(gold/τ_g))``.
    Targets that underflow to exactly 0 contribute 0 (torch's xlogy convention).

    Args:
        scores: (B, K) retriever scores; the gradient flows here.
        gold_scores: (B, K) reader-derived targets, treated as constants.
        temperature_score, temperature_gold: τ_s, τ_g > 0.
        mask: optional (B, K) bool, True = a real passage.
        reduction: "mean" (sum / number of valid elements, = B·K without mask, as
            Atlas), "batchmean" (sum / rows with a valid passage), "sum", or "none" (B, K).

    Returns:
        A scalar, or (B, K) for reduction="none", in float32 (float64 for float64 inputs).
    """
    dtype = _compute_dtype(scores)
    score_logits, valid = _masked_logits(scores.to(dtype) / temperature_score, mask)
    gold_logits, _ = _masked_logits(gold_scores.detach().to(dtype) / temperature_gold, mask)
    log_q = F.log_softmax(score_logits, dim=-1)
    target = F.softmax(gold_logits, dim=-1)
    if mask is not None:
        # Masked entries become (target 0, log q 0): kl_div's xlogy makes them contribute exactly 0,
        # with no -inf in the forward or the backward. Fully masked rows vanish the same way.
        log_q = torch.where(valid, log_q, 0.0)
        target = torch.where(valid, target, 0.0)
    if reduction == "none":
        return F.kl_div(log_q, target, reduction="none")
    # torch's kl_div: Σ target · (log target − log q), targets of exactly 0 contributing 0, as in Atlas.
    total = F.kl_div(log_q, target, reduction="sum")
    if reduction == "sum":
        return total
    if mask is None:
        count = scores.numel() if reduction == "mean" else scores.shape[0]
        return total / max(count, 1)
    count = valid.sum() if reduction == "mean" else valid.any(dim=-1).sum()
    return total / count.clamp_min(1)


def emdr_loss_ref(
    scores: torch.Tensor,
    token_logprobs: torch.Tensor,
    labels: torch.Tensor,
    temperature_score: float = 0.01,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """EMDR²: −mean over valid target tokens of logsumexp_k(ℓ[b,k,t] + log_softmax_k(scores/τ_s)).

    Atlas (``logprob``): the per-token marginal likelihood of the target over the
    retrieved passages, weighted by the retriever's distribution.

    Args:
        scores: (B, K) retriever scores; the gradient flows here.
        token_logprobs: (B, K, T) reader log-probabilities of each target token given
            passage k alone (see atlas_fast.losses.emdr_token_logprobs), constants.
        labels: (B, T), -100 marks padding tokens, which are left out.
        temperature_score: τ_s > 0.
        mask: optional (B, K) bool, True = a real passage.

    Returns:
        A scalar in float32 (float64 for float64 inputs); 0 when no token is valid.
    """
    dtype = _compute_dtype(scores)
    score_logits, valid = _masked_logits(scores.to(dtype) / temperature_score, mask)
    log_q = F.log_softmax(score_logits, dim=-1)
    joint = token_logprobs.detach().to(dtype) + log_q.unsqueeze(-1)
    token_loglik = torch.logsumexp(joint, dim=1)  # (B, T)
    counted = labels != -100
    if valid is not None:
        counted = counted & valid.any(dim=-1, keepdim=True)
    total = torch.where(counted, token_loglik, torch.zeros((), dtype=dtype)).sum()
    return -total / counted.sum().clamp_min(1)
