"""Gold scores: the reader's judgement of each passage, as Atlas computes it, in O(B·K·T) memory.

- `pdist_gold_scores`: PDist, mean log-likelihood of the target given each passage alone.
- `emdr_token_logprobs`: EMDR²'s per-token log-probabilities at temperature τ_g.
- `adist_gold_scores`: ADist, the reader's cross-attention mass per passage (`normssum`).
- `loop_gold_scores`: LOOP, the target NLL with each passage left out, K passes batched into one.

The first two take the reader's final decoder hidden states and its LM-head
weight instead of logits: the Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1)
never holds more than a tile of logits; on CPU the chunked reference, or torch's
chunked F.linear_cross_entropy where that measured faster, a bounded chunk. T5
with tied embeddings (the default) scales the decoder output by d_model^-0.5
before its LM head; pass ``hidden * t5_lm_head_scale(model.config)``.

These are targets, computed under no_grad in Atlas: calling them where autograd
would record (grad mode on and an input requiring grad) raises. Their public home
is atlas_fast.losses (this module is private); LOOP's model surgery, the cached
cross-attention projections, is atlas_fast.models.loop.
"""

from __future__ import annotations

import torch
from torch import nn

from atlas_fast import _dispatch, _validation, ops
from atlas_fast.reference.gold_scores import adist_gold_scores_ref, masked_token_mean, token_logprobs_cpu

__all__ = ["adist_gold_scores", "emdr_token_logprobs", "loop_gold_scores", "pdist_gold_scores", "t5_lm_head_scale"]


def t5_lm_head_scale(config) -> float:
    """The factor Hugging Face's T5 applies to the decoder output before ``lm_head``.

    d_model^-0.5 when the LM head is tied to the embeddings, else 1. transformers ≥ 5
    records the choice as ``config.scale_decoder_outputs``; earlier versions use
    ``config.tie_word_embeddings``.
    """
    scaled = getattr(config, "scale_decoder_outputs", None)
    if scaled is None:
        scaled = config.tie_word_embeddings
    return config.d_model**-0.5 if scaled else 1.0


def _validate_lm_head_inputs(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor) -> None:
    _validation.float_tensor("hidden", hidden, 4)
    _validation.float_tensor("lm_head_weight", lm_head_weight, 2)
    B, _, T, H = hidden.shape
    if lm_head_weight.shape[1] != H:
        raise ValueError(f"lm_head_weight must have shape (V, H) with H={H}; got {tuple(lm_head_weight.shape)}")
    if lm_head_weight.dtype != hidden.dtype:
        raise ValueError(f"lm_head_weight dtype {lm_head_weight.dtype} must match hidden dtype {hidden.dtype}")
    _validation.labels(labels, (B, T))
    _validation.same_device(hidden=hidden, lm_head_weight=lm_head_weight, labels=labels)
    if torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad):
        raise ValueError(
            "gold scores have no gradient (Atlas computes them under torch.no_grad()); "
            "call inside torch.no_grad() or pass detached hidden and lm_head_weight"
        )
    vocab = lm_head_weight.shape[0]
    if _validation.value_checks(labels):
        real = labels[labels != -100]
        if real.numel() and (int(real.min()) < 0 or int(real.max()) >= vocab):
            raise ValueError(f"labels must be -100 (padding) or token ids in [0, {vocab}); got values outside")


def _finite_result(values: torch.Tensor) -> torch.Tensor:
    """A NaN/inf in hidden or the LM head reaches every score it touches: checking the small result replaces a scan
    of the whole (V, H) weight on every call."""
    if values.numel() and _validation.value_checks(values) and not bool(torch.isfinite(values).all()):
        raise ValueError("hidden or lm_head_weight contains NaN or infinite values (the gold scores are not finite)")
    return values


def _token_logprobs(
    hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor, temperature: float, op: str
) -> torch.Tensor:
    """(B, K, T) log softmax(hidden·Wᵀ/τ)[label] via the kernel, or on the reference backend the chunked reference
    or torch's chunked F.linear_cross_entropy, whichever is faster for B·K·T rows."""
    B, K, T, H = hidden.shape
    rows = hidden.reshape(B * K * T, H)
    row_labels = labels[:, None, :].expand(B, K, T).reshape(-1)
    if _dispatch.choose_backend(op, hidden.device, dtype=hidden.dtype) == "triton":
        values = ops.token_logprobs(rows, lm_head_weight, row_labels, temperature)
    else:
        values = token_logprobs_cpu(rows, lm_head_weight, row_labels, temperature)
    return _finite_result(values.view(B, K, T))


def pdist_gold_scores(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """PDist gold scores: mean over valid target tokens of log p(label | passage k alone).

    Equals Atlas's `perplexity_score` (−token cross-entropy summed over labels != -100,
    divided by their count) given the same decoder hidden states.

    Args:
        hidden: (B, K, T, H) final decoder states of the B·K single-passage reader passes,
            as fed to the LM head (T5 with tied embeddings: already × d_model^-0.5).
        lm_head_weight: (V, H), same dtype as hidden.
        labels: (B, T) target ids, -100 = padding; every row needs a valid token.

    Returns:
        (B, K) float32.
    """
    _validate_lm_head_inputs(hidden, lm_head_weight, labels)
    _validation.every_row_has_a_target(labels)
    return masked_token_mean(_token_logprobs(hidden, lm_head_weight, labels, 1.0, "pdist_gold_scores"), labels)


def emdr_token_logprobs(
    hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor, temperature_gold: float = 0.01
) -> torch.Tensor:
    """EMDR² gold side: log softmax(hidden·Wᵀ/τ_g)[label] per passage and target token.

    As Atlas, padding labels (-100) are read as token 0; `emdr_loss` leaves them out.

    Args:
        hidden: (B, K, T, H) as for `pdist_gold_scores`.
        lm_head_weight: (V, H).
        labels: (B, T), -100 = padding.
        temperature_gold: τ_g > 0 (Atlas default 0.01).

    Returns:
        (B, K, T) float32, the ``token_logprobs`` argument of `emdr_loss`.
    """
    temperature_gold = _validation.temperature("temperature_gold", temperature_gold)
    _validate_lm_head_inputs(hidden, lm_head_weight, labels)
    return _token_logprobs(hidden, lm_head_weight, labels, temperature_gold, "emdr_token_logprobs")


def adist_gold_scores(passage_vnorm_mass: torch.Tensor, labels: torch.Tensor, n_layers: int) -> torch.Tensor:
    """ADist gold scores (Atlas `adist`/`evalnormsum`, key `normssum`).

    Args:
        passage_vnorm_mass: (B, T, K) per target token and passage, Σ over decoder layers of
            the head-mean of α·‖v‖ summed over the passage's tokens (padding keys excluded);
            `fid_cross_attention(..., passage_mass="vnorm")` produces it per layer.
        labels: (B, T), -100 = padding; every row needs a valid token.
        n_layers: number of decoder layers summed, > 0.

    Returns:
        (B, K) float32: Σ over valid tokens / (256 · n_layers · valid tokens), 256 being Atlas's constant.
    """
    _validation.float_tensor("passage_vnorm_mass", passage_vnorm_mass, 3)
    B, T, _ = passage_vnorm_mass.shape
    _validation.labels(labels, (B, T))
    _validation.same_device(passage_vnorm_mass=passage_vnorm_mass, labels=labels)
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers <= 0:
        raise ValueError(f"n_layers must be a positive integer; got {n_layers!r}")
    _validation.every_row_has_a_target(labels)
    _validation.finite("passage_vnorm_mass", passage_vnorm_mass)
    return adist_gold_scores_ref(passage_vnorm_mass.detach(), labels, n_layers)


def loop_gold_scores(
    model,
    encoder_states: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    n_passages: int,
    passes_per_batch: int | None = None,
) -> torch.Tensor:
    """LOOP: +mean NLL over valid target tokens with passage k masked out, for every k.

    Equals Atlas's `loop_score` given the same encoder states. Runs under no_grad with
    the model as it is (Atlas puts the reader in eval mode first).

    Args:
        model: a T5ForConditionalGeneration or a BERT-decoder EncoderDecoderModel (patched for FiD or not).
        encoder_states: (B, K·L, H) the K passages of each example, encoded once and concatenated.
        attention_mask: (B, K·L), True/1 = a real token.
        labels: (B, T), -100 = padding; every row needs a valid token.
        n_passages: K.
        passes_per_batch: leave-one-out copies per decoder batch (memory grows with it); default K.

    Returns:
        (B, K) float32.
    """
    _validation.float_tensor("encoder_states", encoder_states, 3)
    B, KL, _ = encoder_states.shape
    if isinstance(n_passages, bool) or not isinstance(n_passages, int) or n_passages <= 0 or KL % n_passages:
        raise ValueError(f"n_passages must be a positive integer dividing K·L = {KL}; got {n_passages!r}")
    _validation.shape("attention_mask", attention_mask, (B, KL), "(B, K·L)")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
        raise ValueError("labels must be a (B, T) integer tensor")
    _validation.labels(labels, (B, labels.shape[1]))
    _validation.every_row_has_a_target(labels)
    per_batch = n_passages if passes_per_batch is None else passes_per_batch
    if isinstance(per_batch, bool) or not isinstance(per_batch, int) or per_batch <= 0:
        raise ValueError(f"passes_per_batch must be a positive integer; got {passes_per_batch!r}")
    from transformers.modeling_outputs import BaseModelOutput

    from atlas_fast.models.loop import cached_cross_projections  # here: atlas_fast.models imports losses

    L = KL // n_passages
    passage_of_key = torch.arange(KL, device=attention_mask.device) // L
    valid_tokens = (labels != -100).sum(-1)
    scores = []
    with torch.no_grad():
        for b in range(B):
            example_states = encoder_states[b : b + 1]
            example_scores = []
            for first in range(0, n_passages, per_batch):
                left_out = torch.arange(first, min(first + per_batch, n_passages), device=attention_mask.device)
                copies = left_out.numel()
                # (copies, K·L): copy c masks the keys of passage left_out[c].
                masks = attention_mask[b].bool()[None, :] & (passage_of_key[None, :] != left_out[:, None])
                copy_labels = labels[b : b + 1].expand(copies, -1).contiguous()
                with cached_cross_projections(model, example_states, copies):
                    logits = model(
                        encoder_outputs=BaseModelOutput(last_hidden_state=example_states.expand(copies, -1, -1)),
                        attention_mask=masks,
                        decoder_input_ids=model.prepare_decoder_input_ids_from_labels(copy_labels),
                        use_cache=False,
                    ).logits
                token_nll = nn.functional.cross_entropy(
                    logits.float().flatten(0, 1), copy_labels.flatten(), reduction="none"
                )
                example_scores.append(token_nll.view(copies, -1).sum(-1) / valid_tokens[b])
            scores.append(torch.cat(example_scores))
    return torch.stack(scores)
