"""What tests/test_atlas_integration.py (a stand-in) and tests/test_atlas_source.py (Atlas's own code) share: the
FiD batch, the retriever step Atlas.forward takes with it, and ADist's normssum the way Atlas means it (from the
materialised cross-attention maps of a T5 reader)."""

import torch

from atlas_fast.fid_patch import cross_attention_modules
from atlas_fast.reference.atlas import atlas_normssum


@torch.no_grad()
def normssum_from_maps(reader, states, flat_mask, decoder_input_ids, labels, n_passages):
    """states (B, K·L, d) FiD encoder output, flat_mask (B, K·L) bool → (B, K) normssum, via output_attentions."""
    from transformers.modeling_outputs import BaseModelOutput

    bsz = states.size(0)
    maps = reader(
        encoder_outputs=BaseModelOutput(last_hidden_state=states),
        attention_mask=flat_mask,
        decoder_input_ids=decoder_input_ids,
        output_attentions=True,
        use_cache=False,
        return_dict=True,
    ).cross_attentions
    norm_scores = []
    for (module, _, _), weights in zip(cross_attention_modules(reader), maps, strict=True):
        v = module.v(states).view(bsz, -1, module.n_heads, module.key_value_proj_dim).transpose(1, 2)
        norm_scores.append((weights * v.norm(dim=-1)[:, :, None, :]).mean(1))  # head mean of α·‖v‖
    return atlas_normssum(torch.stack(norm_scores), flat_mask, labels, n_passages)


def fid_batch(B, K, L, T, vocab, padded_targets):
    """(reader_ids (B, K, L), reader_mask (B, K, L) with a partly and an almost fully padded passage,
    decoder_input_ids (B, T), labels (B, T) whose last row ends in ``padded_targets`` -100s)."""
    torch.manual_seed(2)
    reader_ids = torch.randint(1, vocab, (B, K, L))
    reader_mask = torch.ones(B, K, L, dtype=torch.bool)
    reader_mask[0, 1, 3:] = False
    reader_mask[1, 2, 1:] = False
    labels = torch.randint(1, vocab, (B, T))
    labels[1, -padded_targets:] = -100
    decoder_input_ids = torch.cat([torch.zeros(B, 1, dtype=torch.long), labels[:, :-1].clamp_min(0)], dim=1)
    return reader_ids, reader_mask, decoder_input_ids, labels


def retriever_step(model, mode, score, batch, cfg):
    """What Atlas.forward does with its retriever score once the reader has run: the gold scores of ``mode``, then the
    loss. Returns (gold scores, loss, gradient of the loss w.r.t. ``score``)."""
    reader_ids, reader_mask, decoder_input_ids, labels = batch
    arguments = (reader_ids, reader_mask, decoder_input_ids, labels, cfg, reader_ids.size(0))
    if mode == "evalnormsum":
        gold = model.eval_score(*arguments, None).float()
    else:
        method = {"ppmean": model.perplexity_score, "emdr": model.emdr_score, "loop": model.loop_score}[mode]
        gold = method(*arguments).float()
    score = score.detach().clone().requires_grad_()
    loss = model.logprob(score, gold, labels) if mode == "emdr" else model.kldivloss(score, gold)
    (grad,) = torch.autograd.grad(loss, score)
    return gold, loss.detach(), grad
