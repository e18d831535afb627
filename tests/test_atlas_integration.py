"""use_atlas_fast on a stand-in for Atlas's `src.atlas.Atlas`: the same retriever losses and gradients as Atlas's own
methods, for PDist, EMDR², LOOP and ADist (normssum), tied and untied T5, τ 0.01 and 0.1.

The stand-in mirrors the names, arguments and results of the Atlas methods use_atlas_fast replaces, computed Atlas's
way (the full logits: atlas_fast.reference.atlas), over a plain Hugging Face T5 reader. tests/test_atlas_source.py
runs the same comparison on Atlas's real code where a checkout is given.
"""

from types import SimpleNamespace

import pytest
import torch
from atlas_helpers import fid_batch, normssum_from_maps, retriever_step
from tiny_t5 import VOCAB, tiny_t5

from atlas_fast.fid_patch import set_attention_implementation
from atlas_fast.integrations.atlas import use_atlas_fast
from atlas_fast.reference.atlas import (
    atlas_gold_log_probs,
    atlas_kldivloss,
    atlas_logprob,
    atlas_loop_score,
    atlas_perplexity_score,
)
from atlas_fast.testing import assert_close

B, K, L, T = 2, 3, 6, 4


class AtlasStandIn:
    """Atlas's retriever-target methods, Atlas's way, with its signatures (cfg is the encoder config it mutates)."""

    def __init__(self, reader, temperature_score, temperature_gold, gold_score_mode="ppmean"):
        self.reader = reader
        self.opt = SimpleNamespace(
            temperature_score=temperature_score,
            temperature_gold=temperature_gold,
            retriever_n_context=K,
            gold_score_mode=gold_score_mode,
        )

    def kldivloss(self, score, gold_score):
        return atlas_kldivloss(score, gold_score, self.opt.temperature_score, self.opt.temperature_gold)

    def _single_passage_logits(self, reader_ids, reader_mask, decoder_input_ids, bsz):
        n = reader_ids.size(1)
        return self.reader(
            input_ids=reader_ids.view(bsz * n, -1),
            attention_mask=reader_mask.view(bsz * n, -1),
            decoder_input_ids=torch.repeat_interleave(decoder_input_ids, n, dim=0),
            use_cache=False,
        ).logits

    @torch.no_grad()
    def perplexity_score(self, reader_ids, reader_mask, decoder_input_ids, labels, cfg, bsz):
        logits = self._single_passage_logits(reader_ids, reader_mask, decoder_input_ids, bsz)
        return atlas_perplexity_score(logits, labels, reader_ids.size(1))

    @torch.no_grad()
    def emdr_score(self, reader_ids, reader_mask, decoder_input_ids, labels, cfg, bsz):
        return self._single_passage_logits(reader_ids, reader_mask, decoder_input_ids, bsz)

    def logprob(self, score, gold_score, labels):
        gold = atlas_gold_log_probs(gold_score, labels, self.opt.retriever_n_context, self.opt.temperature_gold)
        return atlas_logprob(score, gold, labels, self.opt.temperature_score)

    def _fid_states(self, reader_ids, reader_mask, bsz):
        n = reader_ids.size(1)
        states = self.reader.encoder(
            input_ids=reader_ids.view(bsz * n, -1), attention_mask=reader_mask.view(bsz * n, -1)
        ).last_hidden_state
        return states.reshape(bsz, -1, states.size(-1))

    @torch.no_grad()
    def loop_score(self, reader_ids, reader_mask, decoder_input_ids, labels, cfg, bsz):
        return atlas_loop_score(self.reader, self._fid_states(reader_ids, reader_mask, bsz), reader_mask, labels)

    @torch.no_grad()
    def eval_score(self, reader_ids, reader_mask, decoder_input_ids, labels, cfg, bsz, mask_query):
        """normssum from the materialised (B, NH, T, K·L) cross-attention maps, as Atlas means it."""
        states, flat_mask = self._fid_states(reader_ids, reader_mask, bsz), reader_mask.view(bsz, -1)
        return normssum_from_maps(self.reader, states, flat_mask, decoder_input_ids, labels, reader_ids.size(1))


def _inputs():
    return fid_batch(B, K, L, T, VOCAB, padded_targets=1)


def _retriever_loss(model, mode, score):
    return retriever_step(model, mode, score, _inputs(), SimpleNamespace())


@pytest.mark.parametrize("mode", ["ppmean", "emdr", "loop", "evalnormsum"])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("temperature", [0.01, 0.1])
def test_patched_methods_give_atlas_losses_and_gradients(mode, tied, temperature):
    reader = tiny_t5(tie_word_embeddings=tied).eval()
    if hasattr(reader, "set_attn_implementation"):  # the stand-in reads the materialised cross-attention maps
        set_attention_implementation(reader, "eager")  # (transformers 4.x's T5 has no other implementation)
    score = torch.randn(B, K)
    atlas = _retriever_loss(AtlasStandIn(reader, temperature, temperature * 2, mode), mode, score)
    patched = _retriever_loss(use_atlas_fast(AtlasStandIn(reader, temperature, temperature * 2, mode)), mode, score)
    if mode != "emdr":  # EMDR²'s gold side changes form: (B, K, T) log-probabilities instead of logits
        assert_close(patched[0], atlas[0], rtol=1e-5, atol=1e-6)
    assert_close(patched[1], atlas[1], rtol=1e-5, atol=1e-6)
    assert_close(patched[2], atlas[2], rtol=1e-4, atol=1e-7)


def test_emdr_gold_side_is_token_logprobs_at_the_gold_temperature():
    model = use_atlas_fast(AtlasStandIn(tiny_t5().eval(), 0.01, 0.5))
    reader_ids, reader_mask, decoder_input_ids, labels = _inputs()
    gold = model.emdr_score(reader_ids, reader_mask, decoder_input_ids, labels, SimpleNamespace(), B)
    logits = AtlasStandIn(model.reader, 0.01, 0.5).emdr_score(
        reader_ids, reader_mask, decoder_input_ids, labels, None, B
    )
    assert gold.shape == (B, K, T)
    assert_close(gold, atlas_gold_log_probs(logits, labels, K, 0.5), rtol=1e-5, atol=1e-6)


def test_atlas_fid_shape_globals_are_set_as_atlas_sets_them():
    model = use_atlas_fast(AtlasStandIn(tiny_t5().eval(), 0.1, 0.1))
    reader_ids, reader_mask, decoder_input_ids, labels = _inputs()
    cfg = SimpleNamespace()
    model.perplexity_score(reader_ids, reader_mask, decoder_input_ids, labels, cfg, B)
    assert (cfg.bsz, cfg.n_context) == (B * K, 1)
    model.loop_score(reader_ids, reader_mask, decoder_input_ids, labels, cfg, B)
    assert (cfg.bsz, cfg.n_context) == (B, K)


def test_only_that_instance_changes_and_a_wrong_object_is_refused():
    reader = tiny_t5()
    patched, untouched = use_atlas_fast(AtlasStandIn(reader, 0.1, 0.1)), AtlasStandIn(reader, 0.1, 0.1)
    assert patched.kldivloss.__func__ is not AtlasStandIn.kldivloss
    assert untouched.kldivloss.__func__ is AtlasStandIn.kldivloss
    with pytest.raises(TypeError, match=r"expects an Atlas model .* has no kldivloss"):
        use_atlas_fast(SimpleNamespace(opt=None, reader=None))


def test_atlas_eval_modes_other_than_normssum_are_refused_by_name():
    model = use_atlas_fast(AtlasStandIn(tiny_t5().eval(), 0.1, 0.1, "evalsum"))
    with pytest.raises(NotImplementedError, match="'evalsum' is not covered"):
        model.eval_score(*_inputs()[:3], _inputs()[3], SimpleNamespace(), B, None)
