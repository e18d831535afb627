"""Atlas's own expressions, written as in facebookresearch/atlas (src/atlas.py).

They are what atlas_fast must equal (the parity tests) and what it must beat
(the benchmarks' baseline). Not for use in training: they materialise every
intermediate and know no mask.
"""

import torch

__all__ = [
    "atlas_gold_log_probs",
    "atlas_kldivloss",
    "atlas_logprob",
    "atlas_loop_score",
    "atlas_normssum",
    "atlas_perplexity_score",
]

IGNORE_INDEX = -100


def atlas_kldivloss(score, gold_score, temperature_score=0.01, temperature_gold=0.01):
    """`Atlas.kldivloss`: score, gold_score (B, K) -> scalar, divided by B·K."""
    gold_score = torch.softmax(gold_score / temperature_gold, dim=-1)
    score = torch.nn.functional.log_softmax(score / temperature_score, dim=-1)
    # torch warns that 'mean' is not 'batchmean'; Atlas relies on 'mean' (pytest config silences it).
    return torch.nn.KLDivLoss()(score, gold_score)


def atlas_gold_log_probs(gold_logits, labels, n_context, temperature_gold):
    """Atlas's no-grad gold side of `logprob`: gold_logits (B·K, T, V) → (B, K, T)."""
    with torch.no_grad():
        repeated_labels = torch.repeat_interleave(labels, n_context, dim=0)
        repeated_labels[repeated_labels == IGNORE_INDEX] = 0
        gold_log_prob = torch.nn.functional.log_softmax(gold_logits / temperature_gold, dim=-1)
        gold_log_probs = torch.gather(gold_log_prob, dim=-1, index=repeated_labels[..., None]).view(
            gold_log_prob.size(0), -1
        )
        return gold_log_probs.view(labels.size(0), n_context, -1)


def atlas_logprob(score, gold_log_probs, labels, temperature_score=0.01):
    """`Atlas.logprob` after its no-grad gold side: score (B, K), gold_log_probs (B, K, T), labels (B, T)."""
    mask_labels = labels >= 0
    log_score = torch.nn.functional.log_softmax(score / temperature_score, dim=-1)
    log_prob = gold_log_probs + log_score[..., None]
    logsumprobs = torch.logsumexp(log_prob, dim=1)
    return -1 * torch.sum(logsumprobs * mask_labels) / torch.sum(mask_labels)


def atlas_perplexity_score(logits, labels, n_context):
    """`Atlas.perplexity_score` after the reader pass: logits (B·K, T, V), labels (B, T) → (B, K)."""
    bsz = labels.size(0)
    repeated_labels = torch.repeat_interleave(labels, n_context, dim=0)
    token_loss = torch.nn.functional.cross_entropy(
        logits.view(-1, logits.size(-1)), repeated_labels.flatten(), reduction="none"
    )
    gold_score = token_loss.view(bsz, n_context, -1)
    z = (repeated_labels.view(bsz, n_context, -1) > -1).sum(dim=-1)
    return -gold_score.sum(dim=-1) / z


def atlas_normssum(norm_scores, context_mask, labels, n_passages):
    """ADist's `normssum` from materialised maps (the aggregation of Atlas's `get_crossattention_scores`).

    norm_scores: (n_layers, B, T, K·L) head-mean of α·‖v‖ per layer; context_mask (B, K·L) bool;
    labels (B, T). Returns (B, K).
    """
    n_layers, bsz, n_tokens, _ = norm_scores.size()
    scores = norm_scores.view(n_layers, bsz, n_tokens, n_passages, -1)
    mask = context_mask.view(bsz, n_passages, -1)
    scores = scores.masked_fill(~mask[None, :, None], 0.0)
    scores = scores.masked_fill((labels == IGNORE_INDEX)[None, :, :, None, None], 0.0)
    ntokens_sum = 256 * n_layers * (~(labels == IGNORE_INDEX)).sum(dim=[1])
    return scores.sum(dim=[0, 2, 4]) / ntokens_sum[:, None]


def atlas_loop_score(reader, encoder_hidden_state, reader_mask, labels):
    """`Atlas.loop_score` after its encoder pass: one decoder pass per left-out passage.

    encoder_hidden_state (B, K·L, H); reader_mask (B, K, L) bool; labels (B, T). Returns (B, K),
    +mean token NLL of the target without passage k.
    """
    bsz, total_context = reader_mask.shape[:2]
    gold_scores = []
    for loo_index in range(total_context):
        reader_mask_loo = reader_mask.clone()
        reader_mask_loo[:, loo_index] = False
        reader_mask_loo = reader_mask_loo.view(reader_mask.size(0), -1)
        reader_output_loo = reader(
            encoder_outputs=[encoder_hidden_state], attention_mask=reader_mask_loo, labels=labels, use_cache=False
        )
        token_loss = torch.nn.functional.cross_entropy(
            reader_output_loo.logits.view(-1, reader_output_loo.logits.size(-1)), labels.view(-1), reduction="none"
        )
        mean_loss = token_loss.view(bsz, labels.shape[-1]).sum(dim=-1) / (labels > -1).sum(-1)
        gold_scores.append(mean_loss)
    return torch.stack(gold_scores, dim=1)
