"""PDist gold scores: Atlas's full-logits expression vs the chunked reference and the Triton kernel.

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

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
VOCAB, TARGET_TOKENS, K = 32128, 16, 40


@pytest.mark.parametrize("provider", ["atlas_naive", "reference", "triton"])
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
