"""PDist gold scores: Atlas's full-logits expression against atlas_fast and the peers that never build the logits.

Providers: atlas_naive (Atlas: the (B·K, T, V) logits, then log_softmax); reference (atlas_fast's CPU path:
the chunked reference, or torch's chunked op where it measured faster; extra_info["cpu_path"] says which);
chunked_reference (the hand-written chunked loop, always); triton (the kernel, CUDA); torch_linear_ce
(torch >= 2.13's `F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())`); cut_cross_entropy
(Apple's package: its Triton CCE kernel on CUDA, its torch.compile implementation on CPU).
Shapes: PDist's headline (B·K = 2560, T = 16, H = 768, V = 32,128), a tenth of it, and a decoder-only
vocabulary (V = 151,936, Qwen's) at the small B·K, where Atlas's logits still fit in memory. Gold scores are
computed under no_grad, so there is only a forward mode. The --benchmark-disable smoke run keeps to the
smallest shape.
"""

import pytest
import torch
from harness import run_provider

from atlas_fast.losses import pdist_gold_scores
from atlas_fast.reference.atlas import atlas_perplexity_score
from atlas_fast.reference.gold_scores import masked_token_mean, token_logprobs_ref, uses_torch_linear_ce

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TARGET_TOKENS, K, HIDDEN = 16, 40, 768
PROVIDERS = ["atlas_naive", "reference", "chunked_reference", "triton", "torch_linear_ce", "cut_cross_entropy"]


def _row_nll_provider(provider: str):
    """(rows (N, H), weight (V, H), labels (N,)) → (N,) NLL through a peer, or a reason to skip it here."""
    if provider == "torch_linear_ce":
        if not hasattr(torch.nn, "LinearCrossEntropyOptions"):
            return f"torch {torch.__version__} has no chunked F.linear_cross_entropy (2.13 added it)"
        options = torch.nn.LinearCrossEntropyOptions()
        return lambda rows, weight, labels: torch.nn.functional.linear_cross_entropy(
            rows, weight, labels, reduction="none", options=options
        )
    if provider == "cut_cross_entropy":
        try:
            from cut_cross_entropy import linear_cross_entropy
        except ImportError:
            return "cut-cross-entropy is not installed (pip install atlas_fast[bench])"
        impl = "cce" if DEVICE.type == "cuda" else "torch_compile"
        return lambda rows, weight, labels: linear_cross_entropy(rows, weight, labels, reduction="none", impl=impl)
    return lambda rows, weight, labels: -token_logprobs_ref(rows, weight, labels)  # chunked_reference


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("n_pairs", "vocab"), [(256, 32128), (2560, 32128), (256, 151936)])  # B·K passes
def test_pdist_gold_scores(benchmark, monkeypatch, provider, n_pairs, vocab):
    if benchmark.disabled and (n_pairs, vocab) != (256, 32128):
        pytest.skip("the smoke run keeps to the small shape")
    if provider == "triton" and DEVICE.type != "cuda":
        pytest.skip("triton runs on CUDA only")
    B = n_pairs // K
    hidden = torch.randn(B, K, TARGET_TOKENS, HIDDEN, device=DEVICE) * 0.05
    weight = torch.randn(vocab, HIDDEN, device=DEVICE)
    labels = torch.randint(0, vocab, (B, TARGET_TOKENS), device=DEVICE)
    labels[:, -4:] = -100

    if provider == "atlas_naive":

        def fn():
            with torch.no_grad():
                logits = hidden.view(B * K, TARGET_TOKENS, HIDDEN) @ weight.T
                return atlas_perplexity_score(logits, labels, K)

    elif provider in ("reference", "triton"):
        monkeypatch.setenv("ATLAS_FAST_BACKEND", provider)
        if provider == "reference":
            chunked = not uses_torch_linear_ce(n_pairs * TARGET_TOKENS, vocab)
            benchmark.extra_info["cpu_path"] = "chunked_reference" if chunked else "torch_linear_ce"

        def fn():
            with torch.no_grad():
                return pdist_gold_scores(hidden, weight, labels)

    else:
        row_nll = _row_nll_provider(provider)
        if isinstance(row_nll, str):
            pytest.skip(row_nll)
        rows = hidden.view(-1, HIDDEN)
        # -100 read as token 0, as Atlas does; the mean below drops those tokens anyway.
        row_labels = labels[:, None, :].expand(B, K, TARGET_TOKENS).reshape(-1).clamp_min(0)

        def fn():
            with torch.no_grad():
                return masked_token_mean(-row_nll(rows, weight, row_labels).view(B, K, TARGET_TOKENS), labels)

    run_provider(
        benchmark,
        fn,
        op="pdist_gold_scores",
        shape=f"B·K={n_pairs} T={TARGET_TOKENS} H={HIDDEN} V={vocab}",
        mode="forward",
        provider=provider,
        baseline="atlas_naive",
        device=DEVICE,
    )


@pytest.mark.parametrize("provider", ["atlas_k_passes", "batched_cached_projections"])
def test_loop_gold_scores(benchmark, provider):
    """LOOP on a T5-small-sized random reader (6+6 layers, d_model 512): B=2, K=20 passages of L=128, T=16."""
    from transformers import T5Config, T5ForConditionalGeneration

    from atlas_fast.losses import loop_gold_scores
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
