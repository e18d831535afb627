"""A Hugging Face T5 whose decoder cross-attention runs fid_cross_attention: outputs, mass, generate, training."""

import pytest
import torch
from tiny_t5 import B, K, L, T, fid_inputs, tiny_t5

from atlas_fast import losses
from atlas_fast.fid_patch import patch_for_fid, set_attention_implementation
from atlas_fast.reference.atlas import atlas_normssum
from atlas_fast.testing import assert_close


def test_patched_model_equals_unpatched_and_unpatch_restores():
    model = tiny_t5().eval()
    encoder_outputs, mask, labels = fid_inputs(model)
    with torch.no_grad():
        want = model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels).logits
        patch = patch_for_fid(model, n_passages=K)
        got = model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels).logits
        assert_close(got, want)
        assert patch.passage_mass().shape == (B, T, K)
        with pytest.raises(ValueError, match="already patched"):
            patch_for_fid(model, K)
        patch.unpatch()
        again = model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels).logits
    assert_close(again, want)
    assert not any(hasattr(block.layer[1].EncDecAttention, "_atlas_fast_fid") for block in model.decoder.block)


def test_mass_gives_atlas_adist_gold_scores():
    model = tiny_t5().eval()
    set_attention_implementation(model, "eager")  # the only implementation that returns attention maps
    encoder_outputs, mask, labels = fid_inputs(model)
    with torch.no_grad():
        reference = model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels, output_attentions=True)
        # Atlas's path: materialised cross-attention maps times per-head value norms, head mean per layer.
        norm_scores = []
        for block, attention in zip(model.decoder.block, reference.cross_attentions, strict=True):
            module = block.layer[1].EncDecAttention
            values = module.v(encoder_outputs.last_hidden_state).view(B, K * L, module.n_heads, -1).transpose(1, 2)
            norm_scores.append((attention * values.norm(dim=-1)[:, :, None, :]).mean(dim=1))
        want = atlas_normssum(torch.stack(norm_scores), mask.bool(), labels, K)
        patch = patch_for_fid(model, n_passages=K)
        model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels)
        got = losses.adist_gold_scores(patch.passage_mass(), labels, patch.n_layers)
    assert_close(got, want)
    assert torch.all(got[1, 1] < got[1, 0])  # the almost empty passage gets almost nothing


def test_generate_with_cache_matches_unpatched():
    model = tiny_t5().eval()
    encoder_outputs, mask, _ = fid_inputs(model)
    kwargs = {"encoder_outputs": encoder_outputs, "attention_mask": mask, "max_new_tokens": 5, "do_sample": False}
    want = model.generate(**kwargs)
    patch = patch_for_fid(model, n_passages=K)
    got = model.generate(**kwargs)
    assert torch.equal(got, want)
    assert patch.passage_mass().shape[-1] == K  # the mass of the last decoding step
    patch.unpatch()


def test_patched_model_trains():
    model = tiny_t5(dropout_rate=0.1).train()
    encoder_outputs, mask, labels = fid_inputs(model)
    patch_for_fid(model, n_passages=K, collect_mass=False)
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
        patch_for_fid(torch.nn.Linear(2, 2), 3)


def test_forward_settings_hold_inside_their_block_only():
    model = tiny_t5().eval()
    encoder_outputs, mask, labels = fid_inputs(model)
    patch = patch_for_fid(model, n_passages=1, collect_mass=False)
    with torch.no_grad(), patch.forward_settings(K, collect_mass=True):
        model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels)
        assert patch.passage_mass().shape == (B, T, K)  # K passages, mass collected: the block's settings
    assert (patch.n_passages, patch.collect_mass) == (1, False)
    with pytest.raises(RuntimeError, match="boom"), patch.forward_settings(K, collect_mass=True):
        raise RuntimeError("boom")
    assert (patch.n_passages, patch.collect_mass) == (1, False)  # restored after an error too
