"""Gold scores from the reader, in plain PyTorch: the CPU path and the oracle of the kernels.

PDist and EMDR² need one log-probability per target token, log softmax(h·Wᵀ/τ)[label],
for B·K single-passage reader passes. Atlas materialises the (B·K, T, V) logits to
read them; at B·K = 2560, T = 16, V = 32128 that is 5.3 GB in fp32. The chunked
reference here computes logits for a bounded number of rows at a time (the chunk
is sized from a byte budget), so its memory stays that budget whatever B·K is.

`token_logprobs_naive` is Atlas's full-logits expression, kept as the test oracle
and the benchmark baseline only.

Where torch's own chunked `F.linear_cross_entropy` measured faster (`uses_torch_linear_ce`:
enough rows for the vocabulary), `token_logprobs_cpu` calls it instead of the hand-written
loop; it computes the same values (BENCHMARKS.md, section gold-scores-peers).
"""

from __future__ import annotations

import torch

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "TORCH_LINEAR_CE_MAX_VOCAB_PER_ROW",
    "TORCH_LINEAR_CE_MIN_ROWS",
    "adist_gold_scores_ref",
    "masked_token_mean",
    "token_logprobs_cpu",
    "token_logprobs_naive",
    "token_logprobs_ref",
    "uses_torch_linear_ce",
]

DEFAULT_CHUNK_BYTES = 64 * 2**20  # fp32 logits of one chunk; ~4 chunks of work fit in L3-sized streaming

# Crossovers measured on a 2-core Zen 4, fp32, H = 768 (docs/experiments/gold-scores-cpu.md): torch's chunked op
# took, of token_logprobs_ref's time, x1.08 at 4,096 rows, x0.93 at 8,192 and x0.81 at 24,576 and 40,960 rows
# over V = 32,128, but x1.6 at 8,192 rows and x1.02 at 16,384 over V = 151,936: it pays from 8,192 rows and
# from one row per TORCH_LINEAR_CE_MAX_VOCAB_PER_ROW vocabulary entries.
TORCH_LINEAR_CE_MIN_ROWS = 8192
TORCH_LINEAR_CE_MAX_VOCAB_PER_ROW = 8


def token_logprobs_naive(
    hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Atlas's expression: full logits, log_softmax over V, gather at the label.

    Args:
        hidden: (N, H) decoder outputs (already rescaled as the model's lm_head expects).
        lm_head_weight: (V, H).
        labels: (N,) token ids; -100 is read as token 0, as Atlas does.
        temperature: logits are divided by it before the softmax.

    Returns:
        (N,) float32 log-probabilities.
    """
    logits = (hidden.float() @ lm_head_weight.float().T) / temperature
    safe_labels = labels.clamp_min(0)
    return torch.log_softmax(logits, dim=-1).gather(-1, safe_labels[:, None]).squeeze(-1)


def token_logprobs_ref(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """log softmax(h·Wᵀ/τ)[label] per row, never holding more than ``max_chunk_bytes`` of logits.

    Args:
        hidden: (N, H).
        lm_head_weight: (V, H).
        labels: (N,) token ids; -100 is read as token 0.
        temperature: τ > 0.
        max_chunk_bytes: fp32 logits held at once (at least one row).

    Returns:
        (N,) float32 log-probabilities.
    """
    n_rows, vocab = hidden.shape[0], lm_head_weight.shape[0]
    rows_per_chunk = max(1, max_chunk_bytes // (4 * vocab))
    weight = lm_head_weight.float()
    safe_labels = labels.clamp_min(0)
    out = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)
    for start in range(0, n_rows, rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        chunk = hidden[rows].float()
        logits = chunk @ weight.T
        logits /= temperature  # in place: one chunk of logits alive at a time
        label_logits = logits.gather(-1, safe_labels[rows, None]).squeeze(-1)
        out[rows] = label_logits - torch.logsumexp(logits, dim=-1)
    return out


def uses_torch_linear_ce(n_rows: int, vocab: int) -> bool:
    """Whether `token_logprobs_cpu` hands ``n_rows`` rows over a ``vocab``-token head to torch's chunked
    F.linear_cross_entropy (torch >= 2.13)."""
    enough_rows = n_rows >= TORCH_LINEAR_CE_MIN_ROWS and n_rows * TORCH_LINEAR_CE_MAX_VOCAB_PER_ROW >= vocab
    return enough_rows and hasattr(torch.nn, "LinearCrossEntropyOptions")


def token_logprobs_cpu(
    hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """`token_logprobs_ref`'s contract, through whichever of it and torch's chunked F.linear_cross_entropy is
    faster for this many rows (`uses_torch_linear_ce`). (N, H), (V, H), (N,) → (N,) float32."""
    if not uses_torch_linear_ce(hidden.shape[0], lm_head_weight.shape[0]):
        return token_logprobs_ref(hidden, lm_head_weight, labels, temperature)
    nll = torch.nn.functional.linear_cross_entropy(
        hidden.float() / temperature,  # (h/τ)·Wᵀ = logits/τ
        lm_head_weight.float(),
        labels.clamp_min(0),
        reduction="none",
        options=torch.nn.LinearCrossEntropyOptions(),
    )
    return -nll


def masked_token_mean(token_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over the valid target tokens (labels != -100) of (B, K, T) values → (B, K).

    Rows must have at least one valid token (atlas_fast.losses checks it).
    """
    valid = (labels != -100).unsqueeze(1)  # (B, 1, T)
    return torch.where(valid, token_values, 0.0).sum(-1) / valid.sum(-1)


def adist_gold_scores_ref(passage_vnorm_mass: torch.Tensor, labels: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Atlas's ADist gold score (`normssum`): attention mass per passage over valid target tokens.

    Args:
        passage_vnorm_mass: (B, T, K) Σ over decoder layers of the head-mean of α·‖v‖
            summed over each passage's tokens (padding keys contribute 0).
        labels: (B, T), -100 = padding.
        n_layers: decoder layers the mass was summed over.

    Returns:
        (B, K) float32: Σ_valid t mass / (256 · n_layers · number of valid tokens); 256 is Atlas's constant.
    """
    valid = (labels != -100).unsqueeze(-1)  # (B, T, 1)
    total = torch.where(valid, passage_vnorm_mass.float(), 0.0).sum(1)
    return total / (256 * n_layers * valid.sum(1))
