"""Log-probability of the label token under a linear LM head, without materialising logits.

Computes log softmax(h·Wᵀ/τ)[label] for N rows h (N, H) and a head W (V, H): the
quantity behind Atlas's PDist and EMDR² gold scores. One program owns BLOCK_M
rows and walks the vocabulary in BLOCK_V tiles; each tile of logits is built in
registers with tl.dot over BLOCK_H slices of H, folded into an online max and
log-sum-exp (rescaled by the running max, as in flash attention), and searched
for the label's logit. Nothing but the (N,) result is written to global memory:
the logits never exist outside registers, so memory is O(N) beyond the inputs.

The work is the LM-head matmul itself (2·N·V·H flops); the kernel is compute-bound
like that matmul and saves the (N, V) write and re-read that log_softmax needs.
fp32 accumulation; fp32 inputs use IEEE fp32 dot products (no TF32), as torch's
default matmul does. Gold scores are computed under no_grad in Atlas: there is no
backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton


@triton.jit
def _token_logprobs_kernel(
    hidden_ptr, weight_ptr, labels_ptr, out_ptr,
    N, V, H, stride_hn, stride_wv, temperature,
    IEEE_FP32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=0)
    labels = tl.where(labels < 0, 0, labels)  # Atlas reads the padding label -100 as token 0
    running_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    label_logit = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for v_start in range(0, V, BLOCK_V):
        vocab = v_start + tl.arange(0, BLOCK_V)
        vocab_ok = vocab < V
        logits = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
        for h_start in range(0, H, BLOCK_H):
            dims = h_start + tl.arange(0, BLOCK_H)
            dims_ok = dims < H
            h = tl.load(
                hidden_ptr + rows[:, None] * stride_hn + dims[None, :],
                mask=row_ok[:, None] & dims_ok[None, :],
                other=0.0,
            )
            w = tl.load(
                weight_ptr + vocab[None, :] * stride_wv + dims[:, None],
                mask=vocab_ok[None, :] & dims_ok[:, None],
                other=0.0,
            )
            logits = tl.dot(h, w, logits, input_precision="ieee") if IEEE_FP32 else tl.dot(h, w, logits)
        logits = tl.where(vocab_ok[None, :], logits / temperature, float("-inf"))
        label_logit += tl.sum(tl.where(vocab[None, :] == labels[:, None], logits, 0.0), axis=1)
        new_max = tl.maximum(running_max, tl.max(logits, axis=1))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        running_max = new_max
    tl.store(out_ptr + rows, label_logit - running_max - tl.log(running_sum), mask=row_ok)


def token_logprobs_triton(
    hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log softmax(hidden·Wᵀ/τ)[label] per row; the contract of atlas_fast.reference.token_logprobs_ref.

    Args:
        hidden: (N, H), same dtype as the weight (validated by atlas_fast.losses).
        lm_head_weight: (V, H).
        labels: (N,) token ids, -100 read as 0.
        temperature: τ > 0.

    Returns:
        (N,) float32.
    """
    hidden = hidden.contiguous()
    lm_head_weight = lm_head_weight.contiguous()
    labels = labels.contiguous()
    n_rows, dim = hidden.shape
    vocab = lm_head_weight.shape[0]
    out = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)
    if n_rows == 0:
        return out
    block_m = 64 if n_rows >= 64 else max(16, triton.next_power_of_2(n_rows))
    # fp32 dots run on FMA units with replicated operands: a narrower H slab keeps them in registers.
    widest_h = 16 if hidden.dtype == torch.float32 else 64
    block_v, block_h = 64, min(widest_h, max(16, triton.next_power_of_2(dim)))
    wrap_triton(_token_logprobs_kernel)[(triton.cdiv(n_rows, block_m),)](
        hidden, lm_head_weight, labels, out,
        n_rows, vocab, dim, hidden.stride(0), lm_head_weight.stride(0), temperature,
        IEEE_FP32=hidden.dtype == torch.float32, BLOCK_M=block_m, BLOCK_V=block_v, BLOCK_H=block_h,
        num_warps=4, num_stages=3,
    )  # fmt: skip
    return out
