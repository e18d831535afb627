"""FiD cross-attention forward with the per-passage attention mass, in one pass over the keys.

Algorithm: one program owns BLOCK_T target positions of one (batch, head). It walks
the K passages in order, each in blocks of BLOCK_L keys, with flash attention's
online softmax (running max m, running sum l, output accumulator rescaled when m
grows). For the passage being walked it also accumulates u = Σ_j exp(s_j − m)·w_j,
with w_j = 1 ("prob") or ‖v_j‖ ("vnorm", the (B, NH, K·L) norms computed once on the
host rather than once per row block), 0 for padded keys, rescaled with the
same factor, and stores (u, m) when the passage ends. A second loop over the K
passages turns them into the mass u·exp(m_p − m_final)/l_final. So the
(B, NH, T, K·L) map never exists; the extra memory is O(B·NH·T·K).

Semantics match atlas_fast.reference.fid_cross_attention_ref: logits·scale, padded
keys set to the most negative float (Hugging Face's additive mask: a row with no
real key attends uniformly), fp32 softmax and accumulation; fp32 inputs use IEEE
dot products. Attention dropout (as T5 applies it in training) uses Philox random
numbers indexed by position, so the backward and the tests replay the same mask
from the seed. The backward recomputes the probabilities block by block from the
forward's per-row max and sum (flash attention's recomputation): one kernel over key
blocks for dk and dv, one over target rows for dq; padded keys get no gradient.
Every dot takes the inputs' dtype, so fp16/bf16 run on tensor cores: as in flash
attention's backward, the probabilities and their gradient are rounded to that dtype
before they multiply do, q or k (fp32 accumulation throughout).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

# A kernel may read a global only when it is a constexpr.
_FLOAT32_MIN: tl.constexpr = tl.constexpr(-3.4028234663852886e38)


@triton.jit
def _dropout_scale(batch_head, rows, keys, T, KL, dropout_p, seed):
    """(rows, keys) factor 0 or 1/(1-p) from Philox(seed, position): the same in forward, backward and replay."""
    positions = (batch_head * T + rows)[:, None] * KL + keys[None, :]
    return tl.where(tl.rand(seed, positions) >= dropout_p, 1.0 / (1.0 - dropout_p), 0.0)


@triton.jit
def _dot(a, b, IEEE_FP32: tl.constexpr):
    """a·b with fp32 accumulation: IEEE fp32 FMAs for fp32 operands, tensor cores for fp16/bf16."""
    if IEEE_FP32:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _dropout_mask_kernel(out_ptr, T, KL, dropout_p, seed_ptr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    seed = tl.load(seed_ptr)
    batch_head = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    keys = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    factor = _dropout_scale(batch_head, rows, keys, T, KL, dropout_p, seed)
    tl.store(
        out_ptr + (batch_head * T + rows)[:, None] * KL + keys[None, :],
        factor,
        mask=(rows < T)[:, None] & (keys < KL)[None, :],
    )


@triton.jit
def _fid_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, key_weight_ptr, out_ptr, mass_ptr, max_ptr, row_max_ptr, row_sum_ptr,
    NH, T, L, K, D, scale, dropout_p, seed_ptr,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kj, stride_mb,
    stride_ob, stride_oh, stride_ot, stride_sb, stride_sh, stride_st,
    HAS_KEY_WEIGHT: tl.constexpr, IEEE_FP32: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    seed = tl.load(seed_ptr)  # a device tensor: a new seed neither recompiles nor syncs the host
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
            logits = _dot(q, tl.trans(k), IEEE_FP32)
            logits = tl.where(real[None, :], logits * scale, _FLOAT32_MIN)
            logits = tl.where(in_passage[None, :], logits, float("-inf"))  # keys past the passage end
            new_max = tl.maximum(running_max, tl.max(logits, axis=1))
            rescale = tl.exp(running_max - new_max)
            weights = tl.exp(logits - new_max[:, None])
            running_sum = running_sum * rescale + tl.sum(weights, axis=1)
            # Dropout acts on the output only: the normaliser and the mass see every key.
            dropped = weights
            if HAS_DROPOUT:
                dropped = weights * _dropout_scale(batch_head, rows, keys, T, K * L, dropout_p, seed)
            acc = acc * rescale[:, None] + _dot(dropped.to(v.dtype), v, IEEE_FP32)
            counted = real & in_passage
            if HAS_KEY_WEIGHT:  # "vnorm": ‖v_j‖, computed once per key on the host instead of once per row block
                key_weight = tl.load(key_weight_ptr + batch_head * K * L + keys, mask=counted, other=0.0)
            else:  # "prob"
                key_weight = counted.to(tl.float32)
            passage_mass = passage_mass * rescale + tl.sum(weights * key_weight[None, :], axis=1)
            running_max = new_max
        tl.store(mass_base + passage, passage_mass, mask=row_ok)
        tl.store(max_base + passage, running_max, mask=row_ok)
    out = acc / running_sum[:, None]
    # The backward recomputes probabilities as exp(s - max) / sum: exact even for a row with no real
    # key, whose log-sum-exp would lose its log(count) next to the most negative float.
    row_stats = batch_head * T + rows
    tl.store(row_max_ptr + row_stats, running_max, mask=row_ok)
    tl.store(row_sum_ptr + row_stats, running_sum, mask=row_ok)
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


@triton.jit
def _recomputed_tile(
    q, k, v, grad_out, real, key_ok, row_ok, row_max, row_sum, delta,
    batch_head, rows, keys, T, KL, dropout_p, seed, scale,
    IEEE_FP32: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):  # fmt: skip
    """For a (rows, keys) tile: the dropped probabilities p·z and the logits' gradient p·(do·vᵀ·z − δ), fp32.

    p is recomputed from the forward's row max and sum; padded keys and rows past T give 0.
    Both dots take the inputs' dtype (tensor cores for fp16/bf16), as flash attention's backward does.
    """
    logits = _dot(q, tl.trans(k), IEEE_FP32)
    logits = tl.where(real[None, :], logits * scale, _FLOAT32_MIN)
    probs = tl.exp(logits - row_max[:, None]) / row_sum[:, None]
    probs = tl.where(key_ok[None, :] & row_ok[:, None], probs, 0.0)
    grad_probs = _dot(grad_out, tl.trans(v), IEEE_FP32)
    if HAS_DROPOUT:
        dropout = _dropout_scale(batch_head, rows, keys, T, KL, dropout_p, seed)
        grad_probs = grad_probs * dropout
        probs_dropped = probs * dropout
    else:
        probs_dropped = probs
    grad_logits = tl.where(real[None, :], probs * (grad_probs - delta[:, None]), 0.0)
    return probs_dropped, grad_logits


# The offset helpers take no pointer: torch.compile's analysis of which kernel arguments are written follows a
# store's address back through every argument of the helper that produced it, so an offset computed next to a
# load would mark the loaded input as written, and Inductor would copy it before every launch.
@triton.jit
def _row_block_offsets(batch_head, rows, dims, T, D):
    """A block of target rows of contiguous (B, NH, T, D) tensors: rows < T, element offsets, element mask."""
    row_ok = rows < T
    return row_ok, batch_head * T * D + rows[:, None] * D + dims[None, :], row_ok[:, None] & (dims < D)[None, :]


@triton.jit
def _key_block_offsets(batch_head, keys, dims, KL, D):
    """A block of keys of contiguous (B, NH, K·L, D) tensors: keys < K·L, element offsets, element mask."""
    key_ok = keys < KL
    return key_ok, batch_head * KL * D + keys[:, None] * D + dims[None, :], key_ok[:, None] & (dims < D)[None, :]


@triton.jit
def _load_row_block(
    q_ptr, grad_out_ptr, row_max_ptr, row_sum_ptr, delta_ptr, batch_head, rows, row_ok, row_offsets, row_mask, T
):  # fmt: skip
    """q, do and the forward's row statistics for a block of target rows."""
    q = tl.load(q_ptr + row_offsets, mask=row_mask, other=0.0)
    grad_out = tl.load(grad_out_ptr + row_offsets, mask=row_mask, other=0.0)
    row_max = tl.load(row_max_ptr + batch_head * T + rows, mask=row_ok, other=0.0)
    row_sum = tl.load(row_sum_ptr + batch_head * T + rows, mask=row_ok, other=1.0)
    delta = tl.load(delta_ptr + batch_head * T + rows, mask=row_ok, other=0.0)
    return q, grad_out, row_max, row_sum, delta


@triton.jit
def _load_key_block(k_ptr, v_ptr, mask_ptr, b, keys, key_ok, kv_offsets, kv_mask, KL):
    """k, v and the padding mask (True = real token) for a block of keys."""
    real = tl.load(mask_ptr + b * KL + keys, mask=key_ok, other=0) != 0
    k = tl.load(k_ptr + kv_offsets, mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + kv_offsets, mask=kv_mask, other=0.0)
    return real, k, v


@triton.jit
def _fid_attention_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, grad_out_ptr, row_max_ptr, row_sum_ptr, delta_ptr, grad_k_ptr, grad_v_ptr,
    NH, T, KL, D, scale, dropout_p, seed_ptr,
    IEEE_FP32: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One block of keys: dv = Σ_t pᵀ·do, dk = Σ_t dsᵀ·q·scale with ds = p·(do·vᵀ − δ); padded keys get 0."""
    seed = tl.load(seed_ptr)  # a device tensor: a new seed neither recompiles nor syncs the host
    batch_head = tl.program_id(0)
    b = batch_head // NH
    keys = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    key_ok, kv_offsets, kv_mask = _key_block_offsets(batch_head, keys, dims, KL, D)
    real, k, v = _load_key_block(k_ptr, v_ptr, mask_ptr, b, keys, key_ok, kv_offsets, kv_mask, KL)
    grad_k = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    grad_v = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for start in range(0, T, BLOCK_T):
        rows = start + tl.arange(0, BLOCK_T)
        row_ok, row_offsets, row_mask = _row_block_offsets(batch_head, rows, dims, T, D)
        q, grad_out, row_max, row_sum, delta = _load_row_block(
            q_ptr, grad_out_ptr, row_max_ptr, row_sum_ptr, delta_ptr, batch_head, rows, row_ok, row_offsets,
            row_mask, T,
        )  # fmt: skip
        dropped, grad_logits = _recomputed_tile(
            q, k, v, grad_out, real, key_ok, row_ok, row_max, row_sum, delta,
            batch_head, rows, keys, T, KL, dropout_p, seed, scale, IEEE_FP32, HAS_DROPOUT,
        )  # fmt: skip
        grad_v += _dot(tl.trans(dropped.to(grad_out.dtype)), grad_out, IEEE_FP32)
        grad_k += _dot(tl.trans(grad_logits.to(q.dtype)), q, IEEE_FP32) * scale
    tl.store(grad_k_ptr + kv_offsets, grad_k.to(grad_k_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(grad_v_ptr + kv_offsets, grad_v.to(grad_v_ptr.dtype.element_ty), mask=kv_mask)


@triton.jit
def _fid_attention_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, grad_out_ptr, row_max_ptr, row_sum_ptr, delta_ptr, grad_q_ptr,
    NH, T, KL, D, scale, dropout_p, seed_ptr,
    IEEE_FP32: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One block of target rows: dq = Σ_keys ds·k·scale."""
    seed = tl.load(seed_ptr)  # a device tensor: a new seed neither recompiles nor syncs the host
    batch_head = tl.program_id(0)
    b = batch_head // NH
    rows = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    dims = tl.arange(0, BLOCK_D)
    row_ok, row_offsets, row_mask = _row_block_offsets(batch_head, rows, dims, T, D)
    q, grad_out, row_max, row_sum, delta = _load_row_block(
        q_ptr, grad_out_ptr, row_max_ptr, row_sum_ptr, delta_ptr, batch_head, rows, row_ok, row_offsets, row_mask, T
    )
    grad_q = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for start in range(0, KL, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        key_ok, kv_offsets, kv_mask = _key_block_offsets(batch_head, keys, dims, KL, D)
        real, k, v = _load_key_block(k_ptr, v_ptr, mask_ptr, b, keys, key_ok, kv_offsets, kv_mask, KL)
        _, grad_logits = _recomputed_tile(
            q, k, v, grad_out, real, key_ok, row_ok, row_max, row_sum, delta,
            batch_head, rows, keys, T, KL, dropout_p, seed, scale, IEEE_FP32, HAS_DROPOUT,
        )  # fmt: skip
        grad_q += _dot(grad_logits.to(k.dtype), k, IEEE_FP32) * scale
    tl.store(grad_q_ptr + row_offsets, grad_q.to(grad_q_ptr.dtype.element_ty), mask=row_mask)


# Block sizes are bound by registers (the compile gate, `python -m atlas_fast.compile_gate`, checks that
# nothing spills on sm_80 and sm_90 at the benchmarks' shapes): fp32 dots run on FMA units with their
# operands replicated across threads, so fp32 tiles are smaller than fp16/bf16 ones.


def _forward_config(T: int, L: int, D: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """BLOCK_T, BLOCK_L (keys per step), BLOCK_D and num_warps of the forward: powers of two, ≥ 16 for tl.dot."""
    block_d = max(16, triton.next_power_of_2(D))
    keys = 32 if dtype != torch.float32 and block_d <= 64 else 16
    # fp32 at 32 query rows per block spilled 8 B on sm_80 under triton 3.6 (Dh=64); 16 rows do not.
    rows = 16 if dtype == torch.float32 else 32
    return (
        max(16, min(rows, triton.next_power_of_2(T))),
        max(16, min(keys, triton.next_power_of_2(L))),
        block_d,
        4,
    )


def _backward_config(T: int, D: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """BLOCK_T, BLOCK_N (keys per block, across passages), BLOCK_D and num_warps of both backward kernels."""
    block_d = max(16, triton.next_power_of_2(D))
    if dtype == torch.float32:
        return 16, 16, block_d, 8
    return max(16, min(64, triton.next_power_of_2(T))), 32, block_d, 4


def fid_cross_attention_forward_triton(q, k, v, attention_mask, n_passages, scale, passage_mass, dropout_p, seed):
    """Fused forward: out (B, NH, T, Dh) in q's dtype, mass (B, NH, T, K) float32, and the (B, NH, T) float32 row
    max and row sum of the softmax that the backward needs.

    q: (B, NH, T, Dh); k, v: (B, NH, K·L, Dh); attention_mask: (B, K·L), True/1 = real token; n_passages: K;
    scale multiplies q·k; passage_mass "prob" or "vnorm"; dropout_p on the attention weights (the mass is taken
    before it), its Philox mask drawn from ``seed``, a 0-d int64 tensor on q's device (`dropout_keep_scale`
    replays it). Inputs validated already (atlas_fast.attention); the autograd is the registered op's
    (atlas_fast/ops.py).
    """
    B, NH, T, D = q.shape
    KL = k.shape[2]
    L = KL // n_passages
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    mask = attention_mask.to(torch.int8).contiguous()
    out = torch.empty_like(q)
    mass = torch.empty((B, NH, T, n_passages), device=q.device, dtype=torch.float32)
    # (B, NH, K·L) ‖v_j‖ in fp32 for "vnorm"; "prob" weighs every real key by 1 (the pointer is unused).
    key_weight = torch.linalg.vector_norm(v, dim=-1, dtype=torch.float32) if passage_mass == "vnorm" else mass
    passage_max = torch.empty_like(mass)
    row_max = torch.empty((B, NH, T), device=q.device, dtype=torch.float32)
    row_sum = torch.empty_like(row_max)
    block_t, block_l, block_d, num_warps = _forward_config(T, L, D, q.dtype)
    wrap_triton(_fid_attention_fwd_kernel)[(B * NH, triton.cdiv(T, block_t))](
        q, k, v, mask, key_weight, out, mass, passage_max, row_max, row_sum,
        NH, T, L, n_passages, D, scale, dropout_p, seed,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), mask.stride(0),
        out.stride(0), out.stride(1), out.stride(2), mass.stride(0), mass.stride(1), mass.stride(2),
        HAS_KEY_WEIGHT=passage_mass == "vnorm", IEEE_FP32=q.dtype == torch.float32,
        HAS_DROPOUT=dropout_p > 0, BLOCK_T=block_t, BLOCK_L=block_l, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return out, mass, row_max, row_sum


def fid_cross_attention_backward_triton(
    grad_out, q, k, v, attention_mask, out, row_max, row_sum, scale, dropout_p, seed
):
    """(grad_q, grad_k, grad_v) of the forward's ``out`` given grad_out (B, NH, T, Dh): one kernel for dk and dv,
    one for dq, from the saved row statistics (the mass gets no gradient)."""
    B, NH, T, D = q.shape
    KL = k.shape[2]
    q, k, v, out = q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous()
    mask = attention_mask.to(torch.int8).contiguous()
    grad_out = grad_out.contiguous()
    delta = (grad_out.float() * out.float()).sum(-1)  # δ_t = Σ_d do·o, (B, NH, T)
    grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    block_t, block_n, block_d, num_warps = _backward_config(T, D, q.dtype)
    common = dict(
        IEEE_FP32=q.dtype == torch.float32, HAS_DROPOUT=dropout_p > 0,
        BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    shapes = (NH, T, KL, D, scale, dropout_p, seed)
    wrap_triton(_fid_attention_bwd_dkdv_kernel)[(B * NH, triton.cdiv(KL, block_n))](
        q, k, v, mask, grad_out, row_max, row_sum, delta, grad_k, grad_v, *shapes, **common
    )
    wrap_triton(_fid_attention_bwd_dq_kernel)[(B * NH, triton.cdiv(T, block_t))](
        q, k, v, mask, grad_out, row_max, row_sum, delta, grad_q, *shapes, **common
    )
    return grad_q, grad_k, grad_v


def dropout_keep_scale(shape: tuple[int, int, int, int], dropout_p: float, seed: int, device) -> torch.Tensor:
    """The (B, NH, T, K·L) dropout factors (0 or 1/(1-p)) the kernels use for ``seed``: for tests and debugging."""
    B, NH, T, KL = shape
    out = torch.empty(shape, device=device, dtype=torch.float32)
    seed_tensor = torch.tensor(seed, dtype=torch.int64, device=device)
    wrap_triton(_dropout_mask_kernel)[(B * NH, triton.cdiv(T, 16), triton.cdiv(KL, 64))](
        out, T, KL, dropout_p, seed_tensor, BLOCK_T=16, BLOCK_N=64
    )
    return out
