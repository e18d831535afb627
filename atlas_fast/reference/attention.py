"""FiD cross-attention in plain PyTorch: the CPU path and the oracle of the attention kernel.

Fusion-in-Decoder's decoder attends, from T target positions, over the K·L keys
of K independently encoded passages of L tokens. ADist needs, per target token
and passage, the attention mass the passage received, optionally weighted by the
value norms (Atlas's ``normssum``). Atlas gets it by storing (B, T, K·L) maps per
layer; here it is computed passage-chunk by passage-chunk with a running
log-sum-exp, so only (B, NH, T, chunk·L) logits exist at a time.

Semantics follow Hugging Face's T5: the mask is additive with the most negative
float (a fully padded row attends uniformly, as T5 does, and stays finite),
softmax in fp32, `scale` multiplies the logits (T5 uses 1.0). Padded keys carry
no mass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_PASSAGES_PER_CHUNK", "fid_cross_attention_naive", "fid_cross_attention_ref"]

DEFAULT_PASSAGES_PER_CHUNK = 4


def _additive_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, K·L) True/1 = real token -> (B, 1, 1, K·L) fp32 additive mask, as Hugging Face builds it."""
    real = attention_mask.bool()[:, None, None, :]
    return torch.where(real, 0.0, torch.finfo(torch.float32).min)


def _mass_weights(v: torch.Tensor, passage_mass: str) -> torch.Tensor:
    """Per key weight of the mass: 1 ("prob") or the per-head value norm ‖v_j‖ ("vnorm"); (B, NH, K·L)."""
    if passage_mass == "prob":
        return torch.ones(v.shape[:3], dtype=torch.float32, device=v.device)
    return v.detach().float().norm(dim=-1)


def fid_cross_attention_naive(q, k, v, attention_mask, n_passages, scale=1.0, passage_mass=None):
    """Atlas's path: the whole (B, NH, T, K·L) attention map materialised. Test oracle and benchmark baseline."""
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale + _additive_mask(attention_mask)
    probs = torch.softmax(logits, dim=-1)
    out = torch.matmul(probs, v.float()).to(q.dtype)
    if passage_mass is None:
        return out
    weighted = probs.detach() * _mass_weights(v, passage_mass)[:, :, None, :]
    weighted = weighted.masked_fill(~attention_mask.bool()[:, None, None, :], 0.0)
    B, NH, T, _ = q.shape
    return out, weighted.view(B, NH, T, n_passages, -1).sum(-1)


def fid_cross_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor,
    n_passages: int,
    scale: float = 1.0,
    passage_mass: str | None = None,
    passages_per_chunk: int = DEFAULT_PASSAGES_PER_CHUNK,
    dropout_p: float = 0.0,
):
    """Exact FiD cross-attention; with ``passage_mass``, memory O(B·NH·T·chunk·L) beyond the inputs.

    Args:
        q: (B, NH, T, Dh).
        k, v: (B, NH, K·L, Dh).
        attention_mask: (B, K·L), True/1 = real token.
        n_passages: K.
        scale: multiplies q·k (T5: 1.0; BERT-style decoders: 1/√Dh).
        passage_mass: None, "prob" (Σ over the passage's keys of α) or "vnorm" (Σ α·‖v‖).
        passages_per_chunk: passages whose logits are held at once (mass path only).
        dropout_p: dropout on the attention weights, as T5 applies it in training; the mass
            is taken before it.

    Returns:
        out (B, NH, T, Dh) in q's dtype, differentiable in q, k, v; with passage_mass also
        mass (B, NH, T, K) float32, detached.
    """
    if passage_mass is None:
        # SDPA's math on fp32 copies: fp32 softmax as T5, the same additive mask.
        out = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=_additive_mask(attention_mask), scale=scale, dropout_p=dropout_p
        )
        return out.to(q.dtype)
    B, NH, T, _ = q.shape
    L = k.shape[2] // n_passages
    additive = _additive_mask(attention_mask)
    weights = _mass_weights(v, passage_mass) * attention_mask.bool()[:, None, :]  # padded keys carry no mass
    chunk_lse, chunk_out, chunk_mass = [], [], []
    # torch.split, not slicing in a loop: its backward is one concatenation, where every slice's
    # backward would allocate a gradient the size of all the keys.
    keys_per_chunk = passages_per_chunk * L
    for k_chunk, v_chunk, mask_chunk, weight_chunk in zip(
        k.float().split(keys_per_chunk, dim=2),
        v.float().split(keys_per_chunk, dim=2),
        additive.split(keys_per_chunk, dim=-1),
        weights.split(keys_per_chunk, dim=-1),
        strict=True,
    ):
        logits = torch.matmul(q.float(), k_chunk.transpose(-1, -2)) * scale + mask_chunk
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, NH, T, 1)
        probs = torch.exp(logits - lse)  # normalised within the chunk
        chunk_lse.append(lse)
        dropped = F.dropout(probs, dropout_p) if dropout_p > 0 else probs  # dropout commutes with the rescale
        chunk_out.append(torch.matmul(dropped, v_chunk))
        weighted = probs.detach() * weight_chunk[:, :, None, :]
        chunk_mass.append(weighted.view(B, NH, T, -1, L).sum(-1))
    # Rescale every chunk by its share of the global softmax normaliser.
    lse_all = torch.cat(chunk_lse, dim=-1)  # (B, NH, T, n_chunks)
    share = torch.softmax(lse_all, dim=-1)
    out = sum(share[..., c : c + 1] * chunk_out[c] for c in range(len(chunk_out)))
    # A row with no real key: T5's additive mask makes it attend uniformly, but at -3.4e38 the
    # chunk log-sum-exps lose their log(count) term, so give that row the uniform average directly.
    empty_row = ~attention_mask.bool().any(dim=-1)
    out = torch.where(empty_row[:, None, None, None], v.float().mean(dim=2, keepdim=True), out)
    share = share.detach()
    mass = torch.cat([share[..., c : c + 1] * chunk_mass[c] for c in range(len(chunk_mass))], dim=-1)
    return out.to(q.dtype), mass
