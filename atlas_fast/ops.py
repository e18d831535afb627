"""atlas_fast's Triton kernels as registered torch ops (torch.library, namespace ``atlas_fast``).

    torch.ops.atlas_fast.kldivloss(scores, gold_scores, τ_s, τ_g, mask, reduction, with_grad) -> (loss, grad)
    torch.ops.atlas_fast.kldivloss_backward(grad_output, scores, gold_scores, τ_s, τ_g, mask) -> grad
    torch.ops.atlas_fast.emdr_loss(scores, token_logprobs, labels, τ_s, mask, with_grad) -> (loss, grad)
    torch.ops.atlas_fast.token_logprobs(hidden, lm_head_weight, labels, τ) -> logprobs  (gold scores: no gradient)
    torch.ops.atlas_fast.fid_cross_attention(q, k, v, attention_mask, K, scale, passage_mass, dropout_p, seed)
        -> (out, mass, row_max, row_sum)
    torch.ops.atlas_fast.fid_cross_attention_backward(grad_out, q, k, v, attention_mask, out, row_max, row_sum,
        scale, dropout_p, seed) -> (grad_q, grad_k, grad_v)
    torch.ops.atlas_fast.index_topk(queries, rows, row_ids, k) -> (scores, ids)  (TorchDocumentIndex's search)

Each op has a fake implementation (shapes and dtypes only), so torch.compile traces a call without running it
and without a graph break, and autograd through `register_autograd`. The loss ops return, when ``with_grad``, the
float32 gradient of a scalar loss w.r.t. the scores from the same launch (the kernels hold both softmaxes
already), so that the backward is one multiplication by grad_output; reduction="none" has a (B, K) grad_output,
so its backward is an op of its own.

Registration: on a machine with CUDA the ops are `torch.library.triton_op`s whose launchers call their kernels
through `wrap_triton`, so torch.compile decomposes each op into its Triton kernels and Inductor schedules them
with the rest of the graph. Elsewhere (Triton's CPU interpreter, the compile gate) they are opaque `custom_op`s:
wrap_triton hands interpreted kernels back unwrapped, so a traced triton_op could not run them. The explicit
fake implementations serve both (they replace the triton_op's own, which would run the launcher on fake
tensors to learn the same shapes).

The references (atlas_fast/reference/) are plain PyTorch, which torch.compile traces and fuses as it is: they
are not wrapped. atlas_fast.losses and atlas_fast.attention validate the arguments,
choose the backend and call these functions on the Triton path; the ops themselves check nothing.
"""

from typing import Optional

import torch
from torch.library import custom_op, triton_op

from atlas_fast._dispatch import interpreting

__all__ = ["emdr_loss", "fid_cross_attention", "index_topk", "kldivloss", "token_logprobs"]


def _register(name: str):
    """triton_op where the kernels run compiled (CUDA), custom_op where they can only be interpreted. Decided at
    import, when torch.compile has not traced anything yet; triton_op imports triton, which CPU-only imports of
    atlas_fast avoid."""
    if torch.cuda.is_available() and not interpreting():
        return triton_op(name, mutates_args=())
    return custom_op(name, mutates_args=())


# ---------------------------------------------------------------------------- kldivloss


@_register("atlas_fast::kldivloss")
def _kldivloss_op(
    scores: torch.Tensor,
    gold_scores: torch.Tensor,
    temperature_score: float,
    temperature_gold: float,
    mask: Optional[torch.Tensor],  # noqa: UP045  (torch.library's schema inference reads typing.Optional)
    reduction: str,
    with_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    from atlas_fast.kernels.kldivloss import kldivloss_forward_triton

    return kldivloss_forward_triton(
        scores, gold_scores, temperature_score, temperature_gold, mask, reduction, with_grad
    )


@_kldivloss_op.register_fake
def _(scores, gold_scores, temperature_score, temperature_gold, mask, reduction, with_grad):
    loss = scores.new_empty(scores.shape if reduction == "none" else (), dtype=torch.float32)
    grad_shape = scores.shape if with_grad and reduction != "none" else (0,)
    return loss, scores.new_empty(grad_shape, dtype=torch.float32)


@_register("atlas_fast::kldivloss_backward")
def _kldivloss_backward_op(
    grad_output: torch.Tensor,
    scores: torch.Tensor,
    gold_scores: torch.Tensor,
    temperature_score: float,
    temperature_gold: float,
    mask: Optional[torch.Tensor],  # noqa: UP045
) -> torch.Tensor:
    from atlas_fast.kernels.kldivloss import kldivloss_backward_triton

    return kldivloss_backward_triton(grad_output, scores, gold_scores, temperature_score, temperature_gold, mask)


@_kldivloss_backward_op.register_fake
def _(grad_output, scores, gold_scores, temperature_score, temperature_gold, mask):
    return scores.new_empty(scores.shape)  # contiguous, as the launcher's output, whatever the input's strides


def _kldivloss_setup(ctx, inputs, output):
    scores, gold_scores, temperature_score, temperature_gold, mask, reduction, _ = inputs
    ctx.scores_dtype, ctx.reduction, ctx.temperatures = scores.dtype, reduction, (temperature_score, temperature_gold)
    if reduction == "none":
        ctx.save_for_backward(scores, gold_scores, mask)
    else:
        ctx.save_for_backward(output[1])


def _kldivloss_backward(ctx, grad_loss, _grad_of_grad):
    if ctx.reduction == "none":
        scores, gold_scores, mask = ctx.saved_tensors
        grad = _kldivloss_backward_op(grad_loss, scores, gold_scores, *ctx.temperatures, mask)
    else:
        (grad,) = ctx.saved_tensors
        grad = (grad * grad_loss).to(ctx.scores_dtype)
    return grad, None, None, None, None, None, None


_kldivloss_op.register_autograd(_kldivloss_backward, setup_context=_kldivloss_setup)


def kldivloss(
    scores: torch.Tensor,
    gold_scores: torch.Tensor,
    temperature_score: float = 0.01,
    temperature_gold: float = 0.01,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """atlas_fast::kldivloss, differentiable in ``scores``: the contract of atlas_fast.losses.kldivloss for validated
    float16/bfloat16/float32 inputs and K ≤ KLDIVLOSS_MAX_K. Returns a float32 scalar, or (B, K) for "none"."""
    with_grad = torch.is_grad_enabled() and scores.requires_grad and reduction != "none"
    loss, _ = _kldivloss_op(scores, gold_scores, temperature_score, temperature_gold, mask, reduction, with_grad)
    return loss


# ---------------------------------------------------------------------------- emdr_loss


@_register("atlas_fast::emdr_loss")
def _emdr_loss_op(
    scores: torch.Tensor,
    token_logprobs: torch.Tensor,
    labels: torch.Tensor,
    temperature_score: float,
    mask: Optional[torch.Tensor],  # noqa: UP045
    with_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    from atlas_fast.kernels.emdr_loss import emdr_loss_forward_triton

    return emdr_loss_forward_triton(scores, token_logprobs, labels, temperature_score, mask, with_grad)


@_emdr_loss_op.register_fake
def _(scores, token_logprobs, labels, temperature_score, mask, with_grad):
    grad_shape = scores.shape if with_grad else (0,)
    return scores.new_empty((), dtype=torch.float32), scores.new_empty(grad_shape, dtype=torch.float32)


def _emdr_loss_setup(ctx, inputs, output):
    ctx.scores_dtype = inputs[0].dtype
    ctx.save_for_backward(output[1])


def _emdr_loss_backward(ctx, grad_loss, _grad_of_grad):
    (grad,) = ctx.saved_tensors
    return (grad * grad_loss).to(ctx.scores_dtype), None, None, None, None, None


_emdr_loss_op.register_autograd(_emdr_loss_backward, setup_context=_emdr_loss_setup)


def emdr_loss(
    scores: torch.Tensor,
    token_logprobs: torch.Tensor,
    labels: torch.Tensor,
    temperature_score: float = 0.01,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """atlas_fast::emdr_loss, differentiable in ``scores``: the contract of atlas_fast.losses.emdr_loss for validated
    float16/bfloat16/float32 inputs and K ≤ EMDR_LOSS_MAX_K. Returns a float32 scalar."""
    with_grad = torch.is_grad_enabled() and scores.requires_grad
    loss, _ = _emdr_loss_op(scores, token_logprobs, labels, temperature_score, mask, with_grad)
    return loss


# ---------------------------------------------------------------------------- token_logprobs (gold scores)


@_register("atlas_fast::token_logprobs")
def token_logprobs(
    hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """(N,) float32 log softmax(hidden·Wᵀ/τ)[label] for (N, H) hidden, (V, H) weight and (N,) labels (-100 read as 0),
    never materialising the (N, V) logits. Gold scores are constants (Atlas computes them under no_grad): no
    autograd is registered, so torch refuses a call on tensors that require grad."""
    from atlas_fast.kernels.gold_scores import token_logprobs_triton

    return token_logprobs_triton(hidden, lm_head_weight, labels, temperature)


@token_logprobs.register_fake
def _(hidden, lm_head_weight, labels, temperature):
    return hidden.new_empty(hidden.shape[:1], dtype=torch.float32)


# ---------------------------------------------------------------------------- fid_cross_attention (Triton)


@_register("atlas_fast::fid_cross_attention")
def _fid_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor,
    n_passages: int,
    scale: float,
    passage_mass: str,
    dropout_p: float,
    seed: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from atlas_fast.kernels.attention import fid_cross_attention_forward_triton

    return fid_cross_attention_forward_triton(q, k, v, attention_mask, n_passages, scale, passage_mass, dropout_p, seed)


@_fid_attention_op.register_fake
def _(q, k, v, attention_mask, n_passages, scale, passage_mass, dropout_p, seed):
    B, NH, T, _ = q.shape
    row_max = q.new_empty((B, NH, T), dtype=torch.float32)
    # Contiguous, as the launcher's outputs, whatever the inputs' strides.
    return q.new_empty(q.shape), q.new_empty((B, NH, T, n_passages), dtype=torch.float32), row_max, row_max.clone()


@_register("atlas_fast::fid_cross_attention_backward")
def _fid_attention_backward_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor,
    out: torch.Tensor,
    row_max: torch.Tensor,
    row_sum: torch.Tensor,
    scale: float,
    dropout_p: float,
    seed: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from atlas_fast.kernels.attention import fid_cross_attention_backward_triton

    return fid_cross_attention_backward_triton(
        grad_out, q, k, v, attention_mask, out, row_max, row_sum, scale, dropout_p, seed
    )


@_fid_attention_backward_op.register_fake
def _(grad_out, q, k, v, attention_mask, out, row_max, row_sum, scale, dropout_p, seed):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _fid_attention_setup(ctx, inputs, output):
    q, k, v, attention_mask, _, scale, _, dropout_p, seed = inputs
    out, _, row_max, row_sum = output
    ctx.save_for_backward(q, k, v, attention_mask, out, row_max, row_sum, seed)
    ctx.scale, ctx.dropout_p = scale, dropout_p
    ctx.mark_non_differentiable(output[1], row_max, row_sum)


def _fid_attention_backward(ctx, grad_out, _grad_mass, _grad_row_max, _grad_row_sum):
    q, k, v, attention_mask, out, row_max, row_sum, seed = ctx.saved_tensors
    grads = _fid_attention_backward_op(
        grad_out, q, k, v, attention_mask, out, row_max, row_sum, ctx.scale, ctx.dropout_p, seed
    )
    return *grads, None, None, None, None, None, None


_fid_attention_op.register_autograd(_fid_attention_backward, setup_context=_fid_attention_setup)


def fid_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor,
    n_passages: int,
    scale: float = 1.0,
    passage_mass: str = "vnorm",
    dropout_p: float = 0.0,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """atlas_fast::fid_cross_attention (the Triton kernels), differentiable in q, k, v; arguments as
    atlas_fast.attention.fid_cross_attention with passage_mass "prob" or "vnorm", validated already.

    seed: the dropout mask's Philox seed; None draws one from torch's generator of q's device (torch.manual_seed
    makes runs repeatable) into a device tensor that the kernels read, so that a new seed neither reads back to
    the host nor recompiles, and a CUDA graph replays with fresh draws.

    Returns:
        out (B, NH, T, Dh) in q's dtype; mass (B, NH, T, K) float32, no gradient.
    """
    if seed is None and dropout_p > 0:
        seed_tensor = torch.randint(0, 2**31 - 1, (), device=q.device)
    else:
        seed_tensor = torch.tensor(seed or 0, dtype=torch.int64, device=q.device)
    out, mass, _, _ = _fid_attention_op(
        q, k, v, attention_mask, n_passages, scale, passage_mass, dropout_p, seed_tensor
    )
    return out, mass


# ---------------------------------------------------------------------------- index_topk


@_register("atlas_fast::index_topk")
def index_topk(
    queries: torch.Tensor, rows: torch.Tensor, row_ids: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k rows of each of the (q, d) queries by inner product over (n, d) ``rows`` with (n,) int64 ``row_ids``:
    (q, k) float32 scores and int64 ids, sorted, ties by the smaller id, (−inf, −1) padding past n; the (q, n) score
    matrix is never written. No gradient (retrieval is not differentiated)."""
    from atlas_fast.kernels.index_topk import search_triton

    return search_triton(queries, rows, row_ids, k)


@index_topk.register_fake
def _(queries, rows, row_ids, k):
    shape = (queries.shape[0], k)
    return queries.new_empty(shape, dtype=torch.float32), queries.new_empty(shape, dtype=torch.int64)
