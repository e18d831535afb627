"""FiD cross-attention forward with the per-passage attention mass, in one pass over the keys.

Algorithm: one program owns BLOCK_T target positions of one (batch, head). It walks
the K passages in order, each in blocks of BLOCK_L keys, with flash attention's
online softmax (running max m, running sum l, output accumulator rescaled when m
grows). For the passage being walked it also accumulates u = Σ_j exp(s_j − m)·w_j,
with w_j = 1 ("prob") or ‖v_j‖ ("vnorm"), 0 for padded keys, rescaled with the
same factor, and stores (u, m) when the passage ends. A second loop over the K
passages turns them into the mass u·exp(m_p − m_final)/l_final. So the
(B, NH, T, K·L) map never exists; the extra memory is O(B·NH·T·K).

Semantics match atlas_fast.reference.fid_cross_attention_ref: logits·scale, padded
keys set to the most negative float (Hugging Face's additive mask: a row with no
real key attends uniformly), fp32 softmax and accumulation; fp32 inputs use IEEE
dot products. Forward only: atlas_fast uses it where no gradient is needed (the
ADist gold-score pass); training goes through the differentiable reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_MASS_PROB, _MASS_VNORM = 0, 1
_FLOAT32_MIN = -3.4028234663852886e38


@triton.jit
def _fid_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, mass_ptr, max_ptr,
    NH, T, L, K, D, scale,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kj, stride_mb,
    stride_ob, stride_oh, stride_ot, stride_sb, stride_sh, stride_st,
    MASS_KIND: tl.constexpr, IEEE_FP32: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    batch_head = tl.program_id(0)
    b = batch_head // NH
    h = batch_head % NH
    rows = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < T
    dim_ok = dims < D
    q = tl.load(
        q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qt + dims[None, :],
        mask=row_ok[:, None] & dim_ok[None, :],
        other=0.0,
    )
    running_max = tl.full((BLOCK_T,), _FLOAT32_MIN, dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_T,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    mass_base = mass_ptr + b * stride_sb + h * stride_sh + rows * stride_st
    max_base = max_ptr + b * stride_sb + h * stride_sh + rows * stride_st
    for passage in range(0, K):
        passage_mass = tl.zeros((BLOCK_T,), dtype=tl.float32)
        for start in range(0, L, BLOCK_L):
            offsets = start + tl.arange(0, BLOCK_L)
            in_passage = offsets < L
            keys = passage * L + offsets
            real = tl.load(mask_ptr + b * stride_mb + keys, mask=in_passage, other=0) != 0
            kv_offsets = b * stride_kb + h * stride_kh + keys[:, None] * stride_kj + dims[None, :]
            kv_mask = in_passage[:, None] & dim_ok[None, :]
            k = tl.load(k_ptr + kv_offsets, mask=kv_mask, other=0.0)
            v = tl.load(v_ptr + kv_offsets, mask=kv_mask, other=0.0)
            logits = tl.dot(q, tl.trans(k), input_precision="ieee") if IEEE_FP32 else tl.dot(q, tl.trans(k))
            logits = tl.where(real[None, :], logits * scale, _FLOAT32_MIN)
            logits = tl.where(in_passage[None, :], logits, float("-inf"))  # keys past the passage end
            new_max = tl.maximum(running_max, tl.max(logits, axis=1))
            rescale = tl.exp(running_max - new_max)
            weights = tl.exp(logits - new_max[:, None])
            running_sum = running_sum * rescale + tl.sum(weights, axis=1)
            if IEEE_FP32:
                acc = acc * rescale[:, None] + tl.dot(weights, v, input_precision="ieee")
            else:
                acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v)
            if MASS_KIND == 1:
                v32 = v.to(tl.float32)
                key_weight = tl.sqrt(tl.sum(v32 * v32, axis=1))
            else:
                key_weight = tl.full((BLOCK_L,), 1.0, dtype=tl.float32)
            key_weight = tl.where(real & in_passage, key_weight, 0.0)
            passage_mass = passage_mass * rescale + tl.sum(weights * key_weight[None, :], axis=1)
            running_max = new_max
        tl.store(mass_base + passage, passage_mass, mask=row_ok)
        tl.store(max_base + passage, running_max, mask=row_ok)
    out = acc / running_sum[:, None]
    tl.store(
        out_ptr + b * stride_ob + h * stride_oh + rows[:, None] * stride_ot + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & dim_ok[None, :],
    )
    # Each passage's mass was accumulated relative to the running max of its time: bring all to the end.
    for passage in range(0, K):
        unscaled = tl.load(mass_base + passage, mask=row_ok, other=0.0)
        at_max = tl.load(max_base + passage, mask=row_ok, other=0.0)
        shift = tl.where(row_ok, at_max - running_max, 0.0)  # rows past T hold no passage maxima
        tl.store(mass_base + passage, unscaled * tl.exp(shift) / running_sum, mask=row_ok)


def fid_cross_attention_triton(q, k, v, attention_mask, n_passages, scale=1.0, passage_mass="vnorm"):
    """Forward-only fused FiD cross-attention with mass; the contract of the reference with passage_mass set.

    Args:
        q: (B, NH, T, Dh); k, v: (B, NH, K·L, Dh); attention_mask: (B, K·L), True/1 = real token.
        n_passages: K. scale: multiplies q·k. passage_mass: "prob" or "vnorm".

    Returns:
        out (B, NH, T, Dh) in q's dtype and mass (B, NH, T, K) float32.
    """
    B, NH, T, D = q.shape
    L = k.shape[2] // n_passages
    q = q.contiguous()
    k = k.contiguous()
    v = v.contiguous()
    mask = attention_mask.to(torch.int8).contiguous()
    out = torch.empty_like(q)
    mass = torch.empty((B, NH, T, n_passages), device=q.device, dtype=torch.float32)
    passage_max = torch.empty_like(mass)
    block_t = max(16, min(64, triton.next_power_of_2(T)))
    block_l = max(16, min(64, triton.next_power_of_2(L)))
    block_d = max(16, triton.next_power_of_2(D))
    grid = (B * NH, triton.cdiv(T, block_t))
    _fid_attention_fwd_kernel[grid](
        q, k, v, mask, out, mass, passage_max,
        NH, T, L, n_passages, D, scale,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), mask.stride(0),
        out.stride(0), out.stride(1), out.stride(2), mass.stride(0), mass.stride(1), mass.stride(2),
        MASS_KIND=_MASS_VNORM if passage_mass == "vnorm" else _MASS_PROB, IEEE_FP32=q.dtype == torch.float32,
        BLOCK_T=block_t, BLOCK_L=block_l, BLOCK_D=block_d, num_warps=4,
    )  # fmt: skip
    return out, mass
