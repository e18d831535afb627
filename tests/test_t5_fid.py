"""A Hugging Face T5 whose decoder cross-attention runs fid_cross_attention: outputs, mass, generate, training."""

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from atlas_fast import losses
from atlas_fast.reference.atlas import atlas_normssum
from atlas_fast.t5_fid import patch_t5_for_fid
from atlas_fast.testing import assert_close

B, K, L, T, VOCAB = 2, 3, 6, 4, 61


def _model(dropout_rate=0.0):
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        dropout_rate=dropout_rate,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    return T5ForConditionalGeneration(config)


def _fid_inputs(model):
    """Encode the B·K passages separately, then concatenate each example's K passages: FiD."""
    torch.manual_seed(1)
    passages = torch.randint(1, VOCAB, (B * K, L))
    mask = torch.ones(B * K, L, dtype=torch.long)
    mask[1, 3:] = 0
    mask[4, :] = 0  # a fully padded passage
    mask[4, 0] = 1
    with torch.no_grad():
        states = model.encoder(input_ids=passages, attention_mask=mask).last_hidden_state
    encoder_outputs = BaseModelOutput(last_hidden_state=states.reshape(B, K * L, -1))
    labels = torch.randint(1, VOCAB, (B, T))
    labels[1, -1] = -100
    return encoder_outputs, mask.reshape(B, K * L), labels


def test_patched_model_equals_unpatched_and_unpatch_restores():
    model = _model().eval()
    encoder_outputs, mask, labels = _fid_inputs(model)
    with torch.no_grad():
        want = model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels).logits
        patch = patch_t5_for_fid(model, n_passages=K)
        got = model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels).logits
        assert_close(got, want)
        assert patch.passage_mass().shape == (B, T, K)
        with pytest.raises(ValueError, match="already patched"):
            patch_t5_for_fid(model, K)
        patch.unpatch()
        again = model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels).logits
    assert_close(again, want)
    assert not any(hasattr(block.layer[1].EncDecAttention, "_atlas_fast_fid") for block in model.decoder.block)


def test_mass_gives_atlas_adist_gold_scores():
    model = _model().eval()
    model.set_attn_implementation("eager")  # the only implementation that returns attention maps
    encoder_outputs, mask, labels = _fid_inputs(model)
    with torch.no_grad():
        reference = model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels, output_attentions=True)
        # Atlas's path: materialised cross-attention maps times per-head value norms, head mean per layer.
        norm_scores = []
        for block, attention in zip(model.decoder.block, reference.cross_attentions, strict=True):
            module = block.layer[1].EncDecAttention
            values = module.v(encoder_outputs.last_hidden_state).view(B, K * L, module.n_heads, -1).transpose(1, 2)
            norm_scores.append((attention * values.norm(dim=-1)[:, :, None, :]).mean(dim=1))
        want = atlas_normssum(torch.stack(norm_scores), mask.bool(), labels, K)
        patch = patch_t5_for_fid(model, n_passages=K)
        model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels)
        got = losses.adist_gold_scores(patch.passage_mass(), labels, patch.n_layers)
    assert_close(got, want)
    assert torch.all(got[1, 1] < got[1, 0])  # the almost empty passage gets almost nothing


def test_generate_with_cache_matches_unpatched():
    model = _model().eval()
    encoder_outputs, mask, _ = _fid_inputs(model)
    kwargs = {"encoder_outputs": encoder_outputs, "attention_mask": mask, "max_new_tokens": 5, "do_sample": False}
    want = model.generate(**kwargs)
    patch = patch_t5_for_fid(model, n_passages=K)
    got = model.generate(**kwargs)
    assert torch.equal(got, want)
    assert patch.passage_mass().shape[-1] == K  # the mass of the last decoding step
    patch.unpatch()


def test_patched_model_trains():
    model = _model(dropout_rate=0.1).train()
    encoder_outputs, mask, labels = _fid_inputs(model)
    patch_t5_for_fid(model, n_passages=K, collect_mass=False)
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=3e-3)
    losses_seen = []
    for _ in range(8):
        loss = model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses_seen.append(loss.item())
    assert losses_seen[-1] < losses_seen[0]


def test_not_a_t5_is_refused():
    with pytest.raises(ValueError, match="T5ForConditionalGeneration"):
        patch_t5_for_fid(torch.nn.Linear(2, 2), 3)
