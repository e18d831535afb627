"""FiD cross-attention with the per-passage attention signal (ADist).

`fid_cross_attention` is the op. When the mass is asked for, it runs the fused
kernels (atlas_fast/kernels/attention.py: forward with the per-passage accumulator,
backward for q, k, v, Philox attention dropout) where Triton can run; otherwise
the PyTorch reference (atlas_fast/reference/attention.py): SDPA without
mass, a passage-chunked exact computation with it. atlas_fast.fid_patch routes a
Hugging Face T5's decoder cross-attention through this op.
"""

from __future__ import annotations

import math

import torch

from atlas_fast import _dispatch, _validation, ops
from atlas_fast.reference.attention import fid_cross_attention_ref

__all__ = ["PASSAGE_MASS_KINDS", "fid_cross_attention"]

PASSAGE_MASS_KINDS = (None, "prob", "vnorm")


def _empty_attention(q, k, v, n_passages, passage_mass):
    """Zeros of the output shapes, still connected to q, k and v for autograd (their gradients are 0)."""
    B, NH, T, Dh = q.shape
    out = q.new_zeros((B, NH, T, Dh)) + (q.sum() + k.sum() + v.sum()) * 0
    if passage_mass is None:
        return out
    return out, torch.zeros((B, NH, T, n_passages), device=q.device, dtype=torch.float32)


def fid_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor,
    n_passages: int,
    scale: float = 1.0,
    passage_mass: str | None = None,
    dropout_p: float = 0.0,
):
    """Softmax attention of T decoder positions over K passages of L encoder tokens each.

    Exact (fp32 softmax, Hugging Face's additive padding mask). With ``passage_mass``
    it also returns, per head, target token and passage, the attention the passage
    received: "prob" = Σ_{j∈passage} α_j, "vnorm" = Σ_{j∈passage} α_j·‖v_j‖ (Atlas's
    ADist quantity, before the head mean); padded keys carry none. The mass is a
    detached by-product; `out` is differentiable in q, k and v.

    Args:
        q: (B, NH, T, Dh).
        k, v: (B, NH, K·L, Dh), same dtype and device as q.
        attention_mask: (B, K·L) bool or integer, True/1 = a real token.
        n_passages: K; K·L must be a multiple of it.
        scale: multiplies q·k; T5 uses 1.0.
        passage_mass: None, "prob" or "vnorm".
        dropout_p: dropout on the attention weights (T5 in training); the mass is taken before it.

    Returns:
        out (B, NH, T, Dh) in q's dtype; with passage_mass, (out, mass (B, NH, T, K) float32). Empty inputs
        (B, NH, T, L or Dh = 0) give zeros: with no key to attend to, out and mass are 0.
    """
    _validation.float_tensor("q", q, 4)
    _validation.float_tensor("k", k, 4)
    _validation.float_tensor("v", v, 4)
    B, NH, _, Dh = q.shape
    if k.shape[:2] != (B, NH) or k.shape[3] != Dh:
        raise ValueError(f"k must have shape (B, NH, K·L, Dh) with B={B}, NH={NH}, Dh={Dh}; got {tuple(k.shape)}")
    _validation.shape("v", v, tuple(k.shape), "(B, NH, K·L, Dh) like k")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if isinstance(n_passages, bool) or not isinstance(n_passages, int) or n_passages <= 0:
        raise ValueError(f"n_passages must be a positive integer; got {n_passages!r}")
    if k.shape[2] % n_passages:
        raise ValueError(f"the K·L = {k.shape[2]} keys do not split into n_passages = {n_passages} passages")
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.is_floating_point():
        raise ValueError("attention_mask must be a bool or integer tensor (True/1 = real token)")
    _validation.shape("attention_mask", attention_mask, (B, k.shape[2]), "(B, K·L)")
    _validation.same_device(q=q, k=k, v=v, attention_mask=attention_mask)
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0; got {scale!r}")
    if passage_mass not in PASSAGE_MASS_KINDS:
        raise ValueError(f"passage_mass must be one of None, 'prob', 'vnorm'; got {passage_mass!r}")
    if not isinstance(dropout_p, (int, float)) or not 0 <= dropout_p < 1:
        raise ValueError(f"dropout_p must be in [0, 1); got {dropout_p!r}")
    if q.numel() == 0 or k.numel() == 0:  # B, NH, T, L or Dh = 0: no key to attend to, nothing attends
        return _empty_attention(q, k, v, n_passages, passage_mass)
    # Without mass, the reference is SDPA, already fused; the kernels exist for the mass.
    if passage_mass is not None and (
        _dispatch.choose_backend("fid_cross_attention", q.device, dtype=q.dtype) == "triton"
    ):
        return ops.fid_cross_attention(
            q, k, v, attention_mask, n_passages, float(scale), passage_mass, float(dropout_p)
        )
    return fid_cross_attention_ref(
        q, k, v, attention_mask, n_passages, float(scale), passage_mass, dropout_p=float(dropout_p)
    )
