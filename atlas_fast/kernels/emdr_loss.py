"""Fused EMDR² loss: log_softmax over K, per-token logsumexp over K, masked token mean.

Algorithm: one program per query row b. It holds the K retriever logits, forms
log q = log_softmax(scores/τ_s) once, then walks the T target tokens in tiles of
BLOCK_T, each tile a (BLOCK_K, BLOCK_T) block of token log-probabilities ℓ. Per
token it takes logsumexp_k(ℓ + log q) and the posterior p_k = softmax_k(ℓ + log q),
accumulating the loss and Σ_t p over valid tokens. The gradient w.r.t. the scores,
−(Σ_t p_kt − n_valid_b · q_k) / (τ_s · N), is written in the forward (N = valid tokens
in the batch, read from device memory so the host never synchronises); the
backward only scales it by grad_output.

Reads B·K·T log-probabilities once; memory-bound. A row of K is held in
registers, so K is capped at EMDR_LOSS_MAX_K (atlas_fast/reference/losses.py; the reference takes larger K).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

_ELEMENTS_PER_TILE = 4096  # BLOCK_K · BLOCK_T


def _num_warps(block_k: int, block_t: int) -> int:
    """Warps per row: a full tile of 4096 with K ≥ 1024 (the row's K-long vectors on top) spilled 8 B on sm_90
    under triton 3.6 with 8 warps; 16 spread it thinner."""
    if block_k * block_t <= 2048:
        return 4
    return 16 if block_k >= 1024 else 8


@triton.jit
def _emdr_fwd_kernel(
    scores_ptr, logprobs_ptr, labels_ptr, mask_ptr, loss_ptr, grad_ptr, n_tokens_ptr,
    K, T, stride_sb, stride_lb, stride_lk, stride_lt, stride_yb, stride_mb, stride_gb,
    tau_s,
    HAS_MASK: tl.constexpr, COMPUTE_GRAD: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)
    valid = cols < K
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + b * stride_mb + cols, mask=cols < K, other=0) != 0)
    row_any = tl.max(valid.to(tl.int32), axis=0) > 0
    s = tl.load(scores_ptr + b * stride_sb + cols, mask=valid, other=0.0).to(tl.float32)
    s = tl.where(valid, s / tau_s, float("-inf"))
    s_shift = s - tl.where(row_any, tl.max(s, axis=0), 0.0)
    s_exp = tl.exp(s_shift)
    s_sum = tl.where(row_any, tl.sum(s_exp, axis=0), 1.0)
    log_q = s_shift - tl.log(s_sum)
    q = s_exp / s_sum

    loglik_sum = 0.0
    posterior_sum = tl.zeros((BLOCK_K,), dtype=tl.float32)
    n_valid = 0.0
    for t0 in range(0, T, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        label = tl.load(labels_ptr + b * stride_yb + ts, mask=ts < T, other=-100)
        counted = (label != -100) & (ts < T) & row_any
        tile_ok = valid[:, None] & (ts < T)[None, :]
        ell = tl.load(
            logprobs_ptr + b * stride_lb + cols[:, None] * stride_lk + ts[None, :] * stride_lt,
            mask=tile_ok,
            other=0.0,
        ).to(tl.float32)
        joint = tl.where(tile_ok, ell + log_q[:, None], float("-inf"))
        top = tl.where(counted, tl.max(joint, axis=0), 0.0)
        weights = tl.exp(joint - top[None, :])
        total = tl.where(counted, tl.sum(weights, axis=0), 1.0)
        loglik_sum += tl.sum(tl.where(counted, top + tl.log(total), 0.0), axis=0)
        posterior = weights / total[None, :]
        posterior_sum += tl.sum(tl.where(counted[None, :], posterior, 0.0), axis=1)
        n_valid += tl.sum(counted.to(tl.float32), axis=0)

    inv_n = 1.0 / tl.load(n_tokens_ptr)
    tl.atomic_add(loss_ptr, -loglik_sum * inv_n)
    if COMPUTE_GRAD:
        grad = tl.where(valid, -(posterior_sum - n_valid * q) * (inv_n / tau_s), 0.0)
        tl.store(grad_ptr + b * stride_gb + cols, grad.to(grad_ptr.dtype.element_ty), mask=cols < K)


def emdr_loss_forward_triton(
    scores: torch.Tensor,
    token_logprobs: torch.Tensor,
    labels: torch.Tensor,
    temperature_score: float,
    mask: torch.Tensor | None,
    with_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 scalar loss and, when ``with_grad``, the float32 (B, K) gradient w.r.t. the scores from the same
    launch; else an empty (0,) tensor.

    The contract of atlas_fast.reference.emdr_loss_ref; inputs validated already (atlas_fast.losses.emdr_loss) and
    K ≤ EMDR_LOSS_MAX_K. No autograd here: atlas_fast.ops registers it as atlas_fast::emdr_loss.
    """
    B, K = scores.shape
    T = labels.shape[1]
    scores = scores.contiguous()
    labels = labels.contiguous()
    mask_arg = mask.contiguous() if mask is not None else scores  # unused without HAS_MASK
    counted = labels != -100
    if mask is not None:
        counted = counted & mask.any(dim=-1, keepdim=True)
    # N stays on the device: no host synchronisation.
    n_tokens = counted.sum().clamp_min(1).to(torch.float32)
    block_k = triton.next_power_of_2(max(K, 2))
    block_t = max(1, min(triton.next_power_of_2(max(T, 1)), _ELEMENTS_PER_TILE // block_k))
    loss = torch.zeros((), device=scores.device, dtype=torch.float32)
    # fp32 so that the backward's scaling by grad_output rounds to the input dtype only once.
    grad = torch.empty((B, K) if with_grad else (0,), device=scores.device, dtype=torch.float32)
    wrap_triton(_emdr_fwd_kernel)[(B,)](
        scores, token_logprobs, labels, mask_arg, loss, grad, n_tokens,
        K, T, scores.stride(0), token_logprobs.stride(0), token_logprobs.stride(1), token_logprobs.stride(2),
        labels.stride(0), mask_arg.stride(0), grad.stride(0) if with_grad else 0,
        temperature_score,
        HAS_MASK=mask is not None, COMPUTE_GRAD=with_grad, BLOCK_K=block_k, BLOCK_T=block_t,
        num_warps=_num_warps(block_k, block_t),
    )  # fmt: skip
    return loss, grad
