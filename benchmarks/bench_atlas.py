"""Atlas's own gold-score and retriever-loss step against the same step after `use_atlas_fast`, in Atlas's code.

Runs only where ATLAS_SRC names a checkout of facebookresearch/atlas (CC BY-NC 4.0, never vendored here), in an
environment where Atlas imports (transformers <= 4.54; `make test-atlas-oldest`'s venv has one):

    ATLAS_SRC=/path/to/atlas python -m pytest benchmarks/bench_atlas.py --benchmark-min-rounds=1

What is timed is the part of `Atlas.forward` that use_atlas_fast replaces: the gold-score method of the mode
(`perplexity_score`, `emdr_score`, `loop_score`, `eval_score`) and the retriever loss on its result
(`kldivloss` or `logprob`), with its backward to the retriever score. Atlas's "evalnormsum" cannot run in
Atlas itself (see atlas_fast/integrations/atlas.py), so ADist has only the atlas_fast provider. The reader is
Atlas's FiD with random T5-base-sized weights (d_model 768, 12 + 12 layers, 32,128 tokens); B = 4, K = 20 and 40
passages of L = 64 tokens (Atlas's NQ recipe uses 512: shorter passages keep a CPU run in minutes), T = 16.
"""

import copy
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from harness import run_provider

from atlas_fast.integrations.atlas import use_atlas_fast

ATLAS_SRC = os.environ.get("ATLAS_SRC")
pytestmark = pytest.mark.skipif(
    not ATLAS_SRC or not Path(ATLAS_SRC, "src", "atlas.py").is_file(),
    reason="set ATLAS_SRC to a checkout of facebookresearch/atlas to benchmark Atlas's own code",
)

B, L, T, VOCAB = 4, 64, 16, 32128
DEVICE = torch.device("cpu")  # Atlas's methods call .cuda(); on a GPU machine run them unpatched there


@pytest.fixture(scope="module")
def atlas_model():
    sys.path.insert(0, ATLAS_SRC)
    try:
        from src import atlas, fid
    finally:
        sys.path.remove(ATLAS_SRC)
    from transformers import T5Config

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=VOCAB, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, tie_word_embeddings=False,
        feed_forward_proj="gated-gelu",
    )  # fmt: skip
    reader = fid.FiD(config).eval()
    opt = SimpleNamespace(temperature_score=0.01, temperature_gold=0.01, retriever_n_context=None, gold_score_mode="")
    return atlas.Atlas(opt, reader, None, SimpleNamespace(vocab={}), None)


@pytest.fixture(autouse=True)
def cuda_is_a_no_op(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)


@pytest.mark.parametrize("provider", ["atlas", "atlas_fast"])
@pytest.mark.parametrize("mode", ["ppmean", "emdr", "loop", "evalnormsum"])
@pytest.mark.parametrize("n_passages", [20, 40])
def test_atlas_retriever_step(benchmark, atlas_model, provider, mode, n_passages):
    if mode == "evalnormsum" and provider == "atlas":
        pytest.skip("Atlas's own evalnormsum cannot run (a misspelt score key; its T5 stores no scores)")
    if benchmark.disabled:
        pytest.skip("T5-base-sized passes take minutes: left out of the smoke run")
    model = copy.copy(atlas_model)  # shares the reader: use_atlas_fast patches this shallow copy's methods only
    model.opt = SimpleNamespace(**{**vars(atlas_model.opt), "retriever_n_context": n_passages, "gold_score_mode": mode})
    if provider == "atlas_fast":
        model = use_atlas_fast(model)
    torch.manual_seed(1)
    reader_ids = torch.randint(1, VOCAB, (B, n_passages, L))
    reader_mask = torch.ones(B, n_passages, L, dtype=torch.bool)
    labels = torch.randint(1, VOCAB, (B, T))
    labels[:, -4:] = -100
    decoder_input_ids = torch.cat([torch.zeros(B, 1, dtype=torch.long), labels[:, :-1].clamp_min(0)], dim=1)
    score = torch.randn(B, n_passages, requires_grad=True)
    cfg = model.reader.encoder.config
    arguments = (reader_ids, reader_mask, decoder_input_ids, labels, cfg, B)

    def step():
        if mode == "evalnormsum":
            gold = model.eval_score(*arguments, None)
        else:
            gold = {"ppmean": model.perplexity_score, "emdr": model.emdr_score, "loop": model.loop_score}[mode](
                *arguments
            )
        gold = gold.float()
        loss = model.logprob(score, gold, labels) if mode == "emdr" else model.kldivloss(score, gold)
        return torch.autograd.grad(loss, score)

    run_provider(
        benchmark,
        step,
        op="atlas_retriever_step",
        shape=f"{mode} T5-base B={B} K={n_passages} L={L} T={T}",
        mode="forward+backward",
        provider=provider,
        baseline="atlas",
        device=DEVICE,
    )
