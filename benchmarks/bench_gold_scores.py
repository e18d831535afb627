"""PDist gold scores: Atlas's full-logits expression vs the chunked reference, the Triton kernel, and torch's own
chunked `F.linear_cross_entropy` (torch >= 2.13, `options=LinearCrossEntropyOptions()`), the direct peer.

Atlas applies the LM head to all B·K·T decoder states and takes the cross-entropy
of the (B·K, T, V) logits. atlas_fast never holds them. Gold scores are computed
under no_grad, so there is only a forward mode. The largest shapes (5 GB of
logits for the naive provider) are left out of the --benchmark-disable smoke run.
"""

import pytest
import torch
from harness import run_provider

from atlas_fast.gold_scores import pdist_gold_scores
from atlas_fast.reference.atlas import atlas_perplexity_score
from atlas_fast.reference.gold_scores import masked_token_mean

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
VOCAB, TARGET_TOKENS, K = 32128, 16, 40


@pytest.mark.parametrize("provider", ["atlas_naive", "reference", "triton", "torch_linear_ce"])
@pytest.mark.parametrize("hidden_size", [512, 1024])
@pytest.mark.parametrize("n_pairs", [256, 2560])  # B·K single-passage reader passes
def test_pdist_gold_scores(benchmark, monkeypatch, provider, hidden_size, n_pairs):
    if benchmark.disabled and n_pairs > 256:
        pytest.skip("the smoke run keeps to the small shape")
    if provider == "triton" and DEVICE.type != "cuda":
        pytest.skip("triton runs on CUDA only")
    B = n_pairs // K
    hidden = torch.randn(B, K, TARGET_TOKENS, hidden_size, device=DEVICE) * 0.05
    weight = torch.randn(VOCAB, hidden_size, device=DEVICE)
    labels = torch.randint(0, VOCAB, (B, TARGET_TOKENS), device=DEVICE)
    labels[:, -4:] = -100

    if provider == "atlas_naive":

        def fn():
            with torch.no_grad():
                logits = hidden.view(B * K, TARGET_TOKENS, hidden_size) @ weight.T
                return atlas_perplexity_score(logits, labels, K)

    elif provider == "torch_linear_ce":
        if not hasattr(torch.nn, "LinearCrossEntropyOptions"):
            pytest.skip(f"torch {torch.__version__} has no chunked F.linear_cross_entropy (2.13 added it)")
        options = torch.nn.LinearCrossEntropyOptions()
        rows = hidden.view(-1, hidden_size)
        row_labels = labels[:, None, :].expand(B, K, TARGET_TOKENS).reshape(-1)

        def fn():
            with torch.no_grad():
                nll = torch.nn.functional.linear_cross_entropy(
                    rows, weight, row_labels, reduction="none", ignore_index=-100, options=options
                )
                return masked_token_mean(-nll.view(B, K, TARGET_TOKENS), labels)

    else:
        monkeypatch.setenv("ATLAS_FAST_BACKEND", provider)

        def fn():
            with torch.no_grad():
                return pdist_gold_scores(hidden, weight, labels)

    run_provider(
        benchmark,
        fn,
        op="pdist_gold_scores",
        shape=f"B·K={n_pairs} T={TARGET_TOKENS} H={hidden_size} V={VOCAB}",
        mode="forward",
        provider=provider,
        baseline="atlas_naive",
        device=DEVICE,
    )


@pytest.mark.parametrize("provider", ["atlas_k_passes", "batched_cached_projections"])
def test_loop_gold_scores(benchmark, provider):
    """LOOP on a T5-small-sized random reader (6+6 layers, d_model 512): B=2, K=20 passages of L=128, T=16."""
    from transformers import T5Config, T5ForConditionalGeneration

    from atlas_fast.gold_scores import loop_gold_scores
    from atlas_fast.reference.atlas import atlas_loop_score

    B, K, L, T = 2, 20, 128, 16
    if benchmark.disabled:
        B, K, L = 1, 4, 16
    torch.manual_seed(0)
    config = T5Config(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config).eval().to(DEVICE)
    states = torch.randn(B, K * L, 512, device=DEVICE)
    mask = torch.rand(B, K * L, device=DEVICE) > 0.1
    labels = torch.randint(0, config.vocab_size, (B, T), device=DEVICE)

    if provider == "atlas_k_passes":

        def fn():
            with torch.no_grad():
                return atlas_loop_score(model, states, mask.view(B, K, L), labels)

    else:

        def fn():
            return loop_gold_scores(model, states, mask, labels, K)

    run_provider(
        benchmark,
        fn,
        op="loop_gold_scores",
        shape=f"T5-small-sized B={B} K={K} L={L} T={T}",
        mode="forward",
        provider=provider,
        baseline="atlas_k_passes",
        device=DEVICE,
    )
