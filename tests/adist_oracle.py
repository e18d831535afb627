"""ADist's normssum the way Atlas means it: from the materialised cross-attention maps of a T5 reader (the oracle
of use_atlas_fast's ADist in tests/test_atlas_integration.py and tests/test_atlas_source.py)."""

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
