"""use_atlas_fast on Atlas's real code: facebookresearch/atlas's own `Atlas` methods against the same methods patched.

Atlas is CC BY-NC 4.0: it is neither committed nor vendored here. These tests run only where ATLAS_SRC names a
checkout of it (0ec8889 or newer), in an environment where Atlas imports (its transformers 4.18, or up to 4.54;
atlas_fast itself installs there without the `train` extra); elsewhere they are skipped with that reason:

    git clone https://github.com/facebookresearch/atlas /tmp/atlas
    ATLAS_SRC=/tmp/atlas python -m pytest tests/test_atlas_source.py

Atlas's reader is its own FiD (src/fid.py, a T5 of Atlas's src/modeling_t5.py), tiny and randomly initialised;
its methods move tensors with `.cuda()`, which these CPU tests make a no-op.
"""

import copy
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from atlas_helpers import fid_batch, normssum_from_maps, retriever_step

from atlas_fast.integrations.atlas import use_atlas_fast
from atlas_fast.testing import assert_close

ATLAS_SRC = os.environ.get("ATLAS_SRC")
pytestmark = pytest.mark.skipif(
    not ATLAS_SRC or not Path(ATLAS_SRC, "src", "atlas.py").is_file(),
    reason="set ATLAS_SRC to a checkout of facebookresearch/atlas to run Atlas's own code",
)

B, K, L, T, VOCAB = 2, 4, 8, 5, 97


@pytest.fixture(scope="module")
def atlas_modules():
    sys.path.insert(0, ATLAS_SRC)
    try:
        from src import atlas, fid
    finally:
        sys.path.remove(ATLAS_SRC)
    return atlas, fid


@pytest.fixture(autouse=True)
def cuda_is_a_no_op(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)


def _atlas(atlas_modules, tied: bool, temperature: float, mode: str):
    atlas, fid = atlas_modules
    from transformers import T5Config

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, tie_word_embeddings=tied,
    )  # fmt: skip
    reader = fid.FiD(config)
    opt = SimpleNamespace(
        temperature_score=temperature, temperature_gold=temperature * 2, retriever_n_context=K, gold_score_mode=mode
    )
    return atlas.Atlas(opt, reader, None, SimpleNamespace(vocab={}), None)


def _inputs():
    return fid_batch(B, K, L, T, VOCAB, padded_targets=2)


def _retriever_loss(model, mode, score):
    """Atlas passes its reader's own encoder config as cfg."""
    return retriever_step(model, mode, score, _inputs(), model.reader.encoder.config)


@pytest.mark.parametrize("mode", ["ppmean", "emdr", "loop"])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("temperature", [0.01, 0.1])
def test_atlas_methods_and_patched_methods_agree(atlas_modules, mode, tied, temperature):
    model = _atlas(atlas_modules, tied, temperature, mode)
    score = torch.randn(B, K)
    expected = _retriever_loss(model, mode, score)
    got = _retriever_loss(use_atlas_fast(copy.deepcopy(model)), mode, score)
    if mode != "emdr":  # EMDR²'s gold side changes form: (B, K, T) log-probabilities instead of logits
        assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
    assert_close(got[1], expected[1], rtol=1e-5, atol=1e-6)
    assert_close(got[2], expected[2], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("tied", [True, False])
def test_adist_is_normssum_of_atlas_own_cross_attention(atlas_modules, tied):
    """Atlas's own "evalnormsum" cannot run (its lookup key is misspelt and, at 0ec8889, its T5 stores no scores):
    the oracle is normssum from the cross-attention maps of Atlas's own FiD, through its output_attentions."""
    model = _atlas(atlas_modules, tied, 0.1, "evalnormsum")
    reader_ids, reader_mask, decoder_input_ids, labels = _inputs()
    cfg = model.reader.encoder.config
    cfg.bsz, cfg.n_context = B, K  # Atlas's FiD encoder reshapes by these
    flat_ids, flat_mask = reader_ids.view(B, -1), reader_mask.view(B, -1)
    with torch.no_grad():  # return_dict: Atlas's FiDStack mis-builds its tuple output
        states = model.reader.encoder(input_ids=flat_ids, attention_mask=flat_mask, return_dict=True).last_hidden_state
    expected = normssum_from_maps(model.reader.eval(), states, flat_mask, decoder_input_ids, labels, K)
    patched = use_atlas_fast(copy.deepcopy(model))
    got = patched.eval_score(reader_ids, reader_mask, decoder_input_ids, labels, cfg, B, None)
    assert_close(got, expected, rtol=1e-5, atol=1e-7)
