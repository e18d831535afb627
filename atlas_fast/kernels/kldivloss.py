"""Fused softmax-KL distillation loss over K retrieved passages (Atlas's `kldivloss`).

Algorithm: one program owns BLOCK_B rows and holds each whole K-long row in
registers. It forms softmax(gold/τ_g) and log_softmax(scores/τ_s) with one max
and one sum per row, the KL terms (exact-zero targets contribute 0), their
reduction, and — for scalar reductions — the gradient w.r.t. the scores,
(softmax(s/τ_s) − target) / τ_s · 1/denominator, all in one launch. The backward
then only multiplies that gradient by grad_output. For reduction="none" the
gradient depends on the (B, K) grad_output, so one backward kernel recomputes
both softmaxes instead of storing them. The autograd around these launchers is
the registered op's (atlas_fast/ops.py).

Reads 2·B·K inputs and writes B·K gradients: memory-bound, so the win over
eager PyTorch is in doing ~10 elementwise passes as one. A row is held in
registers whole, so K is capped at KLDIVLOSS_MAX_K (atlas_fast/reference/losses.py);
beyond that atlas_fast uses the reference. Accumulation is fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

_ELEMENTS_PER_PROGRAM = 4096  # BLOCK_B · BLOCK_K: keeps a program's registers bounded

_REDUCE_NONE, _REDUCE_SUM = 0, 1


@triton.jit
def _row_distributions(
    scores_ptr, gold_ptr, mask_ptr, rows, cols, B, K, stride_s, stride_g, stride_m,
    tau_s, tau_g, HAS_MASK: tl.constexpr,
):  # fmt: skip
    """Validity, log q, q, log t and t for a (BLOCK_B, BLOCK_K) tile of rows."""
    in_bounds = (rows[:, None] < B) & (cols[None, :] < K)
    valid = in_bounds
    if HAS_MASK:
        passage = tl.load(mask_ptr + rows[:, None] * stride_m + cols[None, :], mask=in_bounds, other=0)
        valid = valid & (passage != 0)
    row_any = tl.max(valid.to(tl.int32), axis=1) > 0
    s = tl.load(scores_ptr + rows[:, None] * stride_s + cols[None, :], mask=valid, other=0.0).to(tl.float32)
    g = tl.load(gold_ptr + rows[:, None] * stride_g + cols[None, :], mask=valid, other=0.0).to(tl.float32)
    s = tl.where(valid, s / tau_s, float("-inf"))
    g = tl.where(valid, g / tau_g, float("-inf"))
    # Rows without a valid passage: keep every intermediate finite; they are zeroed by `valid`.
    s_shift = s - tl.where(row_any, tl.max(s, axis=1), 0.0)[:, None]
    g_shift = g - tl.where(row_any, tl.max(g, axis=1), 0.0)[:, None]
    s_exp = tl.exp(s_shift)
    g_exp = tl.exp(g_shift)
    s_sum = tl.where(row_any, tl.sum(s_exp, axis=1), 1.0)
    g_sum = tl.where(row_any, tl.sum(g_exp, axis=1), 1.0)
    log_q = s_shift - tl.log(s_sum)[:, None]
    log_t = g_shift - tl.log(g_sum)[:, None]
    q = s_exp / s_sum[:, None]
    t = g_exp / g_sum[:, None]
    return valid, log_q, q, log_t, t


@triton.jit
def _kldiv_fwd_kernel(
    scores_ptr, gold_ptr, mask_ptr, loss_ptr, grad_ptr, denom_ptr,
    B, K, stride_s, stride_g, stride_m, stride_loss, stride_grad,
    tau_s, tau_g, inv_denom,
    HAS_MASK: tl.constexpr, REDUCE: tl.constexpr, DENOM_FROM_PTR: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_K)
    valid, log_q, q, log_t, t = _row_distributions(
        scores_ptr, gold_ptr, mask_ptr, rows, cols, B, K, stride_s, stride_g, stride_m,
        tau_s, tau_g, HAS_MASK,
    )  # fmt: skip
    contributes = valid & (t > 0.0)
    # Both logs are replaced where the term does not count, so no 0 · (−inf) ever forms.
    pointwise = t * (tl.where(contributes, log_t, 0.0) - tl.where(contributes, log_q, 0.0))
    if REDUCE == 0:
        in_bounds = (rows[:, None] < B) & (cols[None, :] < K)
        tl.store(loss_ptr + rows[:, None] * stride_loss + cols[None, :], pointwise, mask=in_bounds)
    else:
        scale = inv_denom
        if DENOM_FROM_PTR:
            scale = 1.0 / tl.load(denom_ptr)
        tl.atomic_add(loss_ptr, tl.sum(tl.sum(pointwise, axis=1), axis=0) * scale)
        if COMPUTE_GRAD:
            # d/ds_j Σ_i t_i (log t_i − log q_i) = (q_j Σ_i t_i − t_j) / τ_s, and Σ_i t_i = 1 on a valid row.
            grad = tl.where(valid, (q - t) * (scale / tau_s), 0.0)
            in_bounds = (rows[:, None] < B) & (cols[None, :] < K)
            tl.store(
                grad_ptr + rows[:, None] * stride_grad + cols[None, :],
                grad.to(grad_ptr.dtype.element_ty),
                mask=in_bounds,
            )


@triton.jit
def _kldiv_bwd_pointwise_kernel(
    scores_ptr, gold_ptr, mask_ptr, grad_out_ptr, grad_ptr,
    B, K, stride_s, stride_g, stride_m, stride_go, stride_grad,
    tau_s, tau_g,
    HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """reduction="none": grad_j = (q_j Σ_i g_i t_i − g_j t_j) / τ_s for upstream g (B, K)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_K)
    valid, _, q, _, t = _row_distributions(
        scores_ptr, gold_ptr, mask_ptr, rows, cols, B, K, stride_s, stride_g, stride_m,
        tau_s, tau_g, HAS_MASK,
    )  # fmt: skip
    upstream = tl.load(grad_out_ptr + rows[:, None] * stride_go + cols[None, :], mask=valid, other=0.0)
    weighted_target = tl.where(valid, upstream.to(tl.float32) * t, 0.0)
    grad = (q * tl.sum(weighted_target, axis=1)[:, None] - weighted_target) / tau_s
    grad = tl.where(valid, grad, 0.0)
    in_bounds = (rows[:, None] < B) & (cols[None, :] < K)
    tl.store(
        grad_ptr + rows[:, None] * stride_grad + cols[None, :],
        grad.to(grad_ptr.dtype.element_ty),
        mask=in_bounds,
    )


def _launch_config(B: int, K: int) -> tuple[int, int, int, tuple[int]]:
    """BLOCK_B, BLOCK_K, num_warps and the grid for a (B, K) problem."""
    block_k = triton.next_power_of_2(max(K, 2))
    block_b = max(1, min(triton.next_power_of_2(B), _ELEMENTS_PER_PROGRAM // block_k))
    # ~10 fp32 tiles are live at once: at most 16 elements of each per thread keeps them in registers
    # (32 per thread spills on sm_90), hence one warp per 512 elements, up to 32 warps for K = KLDIVLOSS_MAX_K.
    num_warps = min(32, max(4, block_b * block_k // 512))
    return block_b, block_k, num_warps, (triton.cdiv(B, block_b),)


def _denominator(B: int, K: int, mask: torch.Tensor | None, reduction: str) -> tuple[float, torch.Tensor | None]:
    """1/denominator as a Python float, or the denominator as a device tensor when a mask decides it.

    The tensor path keeps the host from synchronising on mask.sum().
    """
    if reduction == "sum":
        return 1.0, None
    if mask is None:
        return 1.0 / (B * K if reduction == "mean" else B), None
    count = mask.sum() if reduction == "mean" else mask.any(dim=-1).sum()
    return 1.0, count.clamp_min(1).to(torch.float32)


def kldivloss_forward_triton(
    scores: torch.Tensor,
    gold_scores: torch.Tensor,
    temperature_score: float,
    temperature_gold: float,
    mask: torch.Tensor | None,
    reduction: str,
    with_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss, float32 scalar or (B, K) for "none", and, when ``with_grad`` (scalar reductions only), the float32
    (B, K) gradient of the loss w.r.t. the scores from the same launch; else an empty (0,) tensor.

    The contract of atlas_fast.reference.kldivloss_ref; inputs validated already (atlas_fast.losses.kldivloss) and
    K ≤ KLDIVLOSS_MAX_K. No autograd here: atlas_fast.ops registers it as atlas_fast::kldivloss.
    """
    B, K = scores.shape
    scores = scores.contiguous()
    gold_scores = gold_scores.contiguous()
    mask_arg = mask.contiguous() if mask is not None else scores  # any pointer; unused without HAS_MASK
    block_b, block_k, num_warps, grid = _launch_config(B, K)
    compute_grad = with_grad and reduction != "none"
    inv_denom, denom = _denominator(B, K, mask, reduction)
    if reduction == "none":
        loss = torch.empty((B, K), device=scores.device, dtype=torch.float32)
    else:
        loss = torch.zeros((), device=scores.device, dtype=torch.float32)
    # fp32 so that the backward's scaling by grad_output rounds to the input dtype only once.
    grad = torch.empty((B, K) if compute_grad else (0,), device=scores.device, dtype=torch.float32)
    wrap_triton(_kldiv_fwd_kernel)[grid](
        scores, gold_scores, mask_arg, loss, grad, denom if denom is not None else loss,
        B, K, scores.stride(0), gold_scores.stride(0), mask_arg.stride(0),
        loss.stride(0) if reduction == "none" else 0, grad.stride(0) if compute_grad else 0,
        temperature_score, temperature_gold, inv_denom,
        HAS_MASK=mask is not None, REDUCE=_REDUCE_NONE if reduction == "none" else _REDUCE_SUM,
        DENOM_FROM_PTR=denom is not None, COMPUTE_GRAD=compute_grad,
        BLOCK_B=block_b, BLOCK_K=block_k, num_warps=num_warps,
    )  # fmt: skip
    return loss, grad


def kldivloss_backward_triton(
    grad_output: torch.Tensor,
    scores: torch.Tensor,
    gold_scores: torch.Tensor,
    temperature_score: float,
    temperature_gold: float,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Gradient w.r.t. the (B, K) scores, in their dtype, of reduction="none"'s (B, K) loss given its (B, K)
    grad_output: one kernel recomputes both softmaxes rather than storing them."""
    B, K = scores.shape
    scores = scores.contiguous()
    gold_scores = gold_scores.contiguous()
    grad_output = grad_output.contiguous()
    mask_arg = mask.contiguous() if mask is not None else scores
    grad = torch.empty_like(scores)
    block_b, block_k, num_warps, grid = _launch_config(B, K)
    wrap_triton(_kldiv_bwd_pointwise_kernel)[grid](
        scores, gold_scores, mask_arg, grad_output, grad,
        B, K, scores.stride(0), gold_scores.stride(0), mask_arg.stride(0),
        grad_output.stride(0), grad.stride(0),
        temperature_score, temperature_gold,
        HAS_MASK=mask is not None, BLOCK_B=block_b, BLOCK_K=block_k, num_warps=num_warps,
    )  # fmt: skip
    return grad
