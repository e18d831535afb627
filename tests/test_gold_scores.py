"""Gold scores: without vocabulary logits (chunked reference vs the naive oracle), Atlas parity on T5;
LOOP: one batched decoder pass with cross-attention projected once = Atlas's K passes."""

import pytest
import torch
from tiny_t5 import VOCAB, K, fid_inputs, tiny_t5

from atlas_fast import losses
from atlas_fast.fid_patch import patch_for_fid
from atlas_fast.reference import token_logprobs_naive, token_logprobs_ref
from atlas_fast.reference.atlas import atlas_gold_log_probs, atlas_loop_score, atlas_normssum, atlas_perplexity_score
from atlas_fast.reference.gold_scores import TORCH_LINEAR_CE_MIN_ROWS, token_logprobs_cpu, uses_torch_linear_ce
from atlas_fast.testing import assert_close, peak_memory_bytes


@pytest.fixture(autouse=True)
def reference_backend(monkeypatch):
    monkeypatch.setenv("ATLAS_FAST_BACKEND", "reference")


@pytest.mark.parametrize(("n_rows", "H", "V"), [(1, 8, 5), (37, 24, 101), (130, 64, 1000)])
@pytest.mark.parametrize("temperature", [1.0, 0.01])
@pytest.mark.parametrize("chunk_rows", [1, 7, 10_000])
def test_chunked_reference_matches_naive(n_rows, H, V, temperature, chunk_rows):
    hidden, weight = torch.randn(n_rows, H), torch.randn(V, H) * 0.2
    labels = torch.randint(0, V, (n_rows,))
    labels[::3] = -100
    got = token_logprobs_ref(hidden, weight, labels, temperature, max_chunk_bytes=chunk_rows * 4 * V)
    assert_close(got, token_logprobs_naive(hidden, weight, labels, temperature), rtol=1e-5)


def test_chunk_budget_bounds_memory():
    """The reference never holds the (N, V) logits: its peak stays near the budget."""
    hidden, weight = torch.randn(2048, 32), torch.randn(4000, 32)
    labels = torch.randint(0, 4000, (2048,))
    budget = 256 * 4 * 4000  # 256 rows of logits
    peak = peak_memory_bytes(
        lambda: token_logprobs_ref(hidden, weight, labels, max_chunk_bytes=budget), torch.device("cpu")
    )
    naive_logits_bytes = 2048 * 4000 * 4
    assert peak <= 3 * budget < naive_logits_bytes / 2


@pytest.mark.skipif(not hasattr(torch.nn, "LinearCrossEntropyOptions"), reason="torch < 2.13: no chunked op")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_cpu_path_hands_large_inputs_to_torch_and_keeps_the_values(dtype, temperature):
    """From TORCH_LINEAR_CE_MIN_ROWS rows the CPU path is torch's chunked F.linear_cross_entropy: same values as
    Atlas's expression, in float32, with -100 read as token 0 (torch would skip it)."""
    n_rows = TORCH_LINEAR_CE_MIN_ROWS + 5
    assert uses_torch_linear_ce(n_rows, 101) and not uses_torch_linear_ce(n_rows - 6, 101)
    assert not uses_torch_linear_ce(n_rows, 151936)  # a decoder-only vocabulary needs more rows per token
    hidden, weight = torch.randn(n_rows, 24, dtype=dtype), (torch.randn(101, 24) * 0.2).to(dtype)
    labels = torch.randint(0, 101, (n_rows,))
    labels[::7] = -100
    got = token_logprobs_cpu(hidden, weight, labels, temperature)
    assert got.dtype == torch.float32
    assert_close(got, token_logprobs_naive(hidden, weight, labels, temperature), rtol=1e-5, atol=1e-5)


def _single_passage_pass(model, B, K, T):
    """Atlas's PDist reader pass: B·K single-passage inputs, targets repeated K times."""
    input_ids = torch.randint(1, VOCAB, (B * K, 12))
    labels = torch.randint(1, VOCAB, (B, T))
    labels[0, -2:] = -100
    labels[1, 1:] = -100  # a row with a single valid token
    repeated = torch.repeat_interleave(labels, K, dim=0)
    with torch.no_grad():
        out = model(input_ids=input_ids, labels=repeated, output_hidden_states=True)
    hidden = out.decoder_hidden_states[-1] * losses.t5_lm_head_scale(model.config)
    return out.logits, hidden.view(B, K, T, -1), labels


@pytest.mark.parametrize("tied", [True, False])
def test_pdist_matches_atlas_perplexity_score_on_t5(tied):
    model = tiny_t5(tied).eval()
    B, K, T = 3, 4, 5
    logits, hidden, labels = _single_passage_pass(model, B, K, T)
    want = atlas_perplexity_score(logits, labels, K)
    with torch.no_grad():
        got = losses.pdist_gold_scores(hidden, model.lm_head.weight, labels)
    assert_close(got, want, rtol=1e-5)


def test_emdr_token_logprobs_match_atlas_on_t5():
    model = tiny_t5(True).eval()
    B, K, T = 2, 3, 4
    logits, hidden, labels = _single_passage_pass(model, B, K, T)
    want = atlas_gold_log_probs(logits, labels, K, 0.01)
    with torch.no_grad():
        got = losses.emdr_token_logprobs(hidden, model.lm_head.weight, labels, temperature_gold=0.01)
    assert_close(got, want, rtol=1e-5)


def test_adist_matches_atlas_normssum_from_materialised_maps():
    n_layers, B, NH, T, K, L = 3, 2, 4, 5, 3, 6
    attention = torch.rand(n_layers, B, NH, T, K * L).softmax(-1)
    value_norms = torch.rand(n_layers, B, NH, K * L)
    context_mask = torch.rand(B, K * L) > 0.2
    context_mask[0, L : 2 * L] = False  # a fully padded passage
    labels = torch.randint(0, 10, (B, T))
    labels[1, 2:] = -100
    norm_scores = (attention * value_norms[:, :, :, None, :]).mean(dim=2)  # head mean, (n_layers, B, T, K·L)
    want = atlas_normssum(norm_scores, context_mask, labels, K)
    # What the attention op hands over: per layer, per passage, padded keys excluded; summed over layers.
    mass = norm_scores.masked_fill(~context_mask[None, :, None], 0).view(n_layers, B, T, K, L).sum(-1).sum(0)
    got = losses.adist_gold_scores(mass, labels, n_layers)
    assert_close(got, want)
    assert torch.all(got[0, 1] == 0)


H, V = 8, 11


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: losses.pdist_gold_scores(torch.randn(2, 3, 4, H), torch.randn(V, H + 1), torch.zeros(2, 4).long()),
            r"lm_head_weight must have shape \(V, H\)",
        ),
        (
            lambda: losses.pdist_gold_scores(
                torch.randn(2, 3, 4, H), torch.randn(V, H).half(), torch.zeros(2, 4).long()
            ),
            "must match hidden dtype",
        ),
        (
            lambda: losses.pdist_gold_scores(torch.randn(2, 3, 4, H), torch.randn(V, H), torch.full((2, 4), V)),
            r"labels must be -100 \(padding\) or token ids in \[0, 11\)",
        ),
        (
            lambda: losses.pdist_gold_scores(
                torch.randn(2, 3, 4, H), torch.randn(V, H), torch.tensor([[1, 2, 3, 4], [-100] * 4])
            ),
            "no valid target token",
        ),
        (
            lambda: losses.pdist_gold_scores(
                torch.randn(2, 3, 4, H, requires_grad=True), torch.randn(V, H), torch.zeros(2, 4).long()
            ),
            r"gold scores have no gradient.*torch.no_grad",
        ),
        (
            lambda: losses.emdr_token_logprobs(torch.randn(2, 3, 4, H), torch.randn(V, H), torch.zeros(2, 4).long(), 0),
            "temperature_gold must be a finite",
        ),
        (
            lambda: losses.emdr_token_logprobs(torch.randn(2, 3, H), torch.randn(V, H), torch.zeros(2, 4).long()),
            "hidden must have 4 dimensions",
        ),
        (lambda: losses.adist_gold_scores(torch.rand(2, 4, 3), torch.zeros(2, 4).long(), 0), "n_layers must be"),
        (lambda: losses.adist_gold_scores(torch.rand(2, 4, 3), torch.zeros(2, 5).long(), 1), r"labels must have shape"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_parameters_are_fine_under_no_grad():
    weight = torch.nn.Parameter(torch.randn(V, H))
    with torch.no_grad():
        scores = losses.pdist_gold_scores(torch.randn(2, 3, 4, H), weight, torch.randint(0, V, (2, 4)))
    assert scores.shape == (2, 3) and scores.dtype == torch.float32 and (scores < 0).all()


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)])
@pytest.mark.parametrize(("n_rows", "dim", "vocab"), [(1, 16, 5), (37, 24, 101), (70, 80, 200)])
@pytest.mark.parametrize("temperature", [1.0, 0.01])
def test_kernel_matches_naive(dtype, n_rows, dim, vocab, temperature):
    from atlas_fast.kernels.gold_scores import token_logprobs_triton
    from atlas_fast.testing import assert_within_reference_error, kernel_device

    device = kernel_device()
    hidden = torch.randn(n_rows, dim, device=device).to(dtype)
    weight = (torch.randn(vocab, dim, device=device) * 0.2).to(dtype)
    labels = torch.randint(0, vocab, (n_rows,), device=device)
    labels[::4] = -100
    got = token_logprobs_triton(hidden, weight, labels, temperature)
    want = token_logprobs_naive(hidden, weight, labels, temperature)
    oracle = token_logprobs_naive(hidden.double(), weight.double(), labels, temperature)
    assert got.dtype == torch.float32
    assert_within_reference_error(got, want, oracle)


@pytest.mark.interpret
def test_public_gold_scores_dispatch_to_the_kernel(monkeypatch):
    from atlas_fast.testing import kernel_device

    monkeypatch.setenv("ATLAS_FAST_BACKEND", "triton")
    device = kernel_device()
    hidden, weight = torch.randn(2, 3, 4, 16, device=device), torch.randn(30, 16, device=device)
    labels = torch.randint(0, 30, (2, 4), device=device)
    got = losses.pdist_gold_scores(hidden, weight, labels)
    monkeypatch.setenv("ATLAS_FAST_BACKEND", "reference")
    assert_close(got, losses.pdist_gold_scores(hidden, weight, labels))


# ---- LOOP -----------------------------------------------------------------------
@pytest.mark.parametrize("passes_per_batch", [None, 2, 1])
@pytest.mark.parametrize("patched", [False, True])
def test_matches_atlas_loop_score(passes_per_batch, patched):
    model = tiny_t5().eval()
    encoder_outputs, mask, labels = fid_inputs(model)
    states = encoder_outputs.last_hidden_state
    with torch.no_grad():
        want = atlas_loop_score(model, states, mask.bool().view(mask.shape[0], K, -1), labels)
    if patched:
        patch_for_fid(model, n_passages=K, collect_mass=False)
    got = losses.loop_gold_scores(model, states, mask, labels, K, passes_per_batch)
    assert got.shape == (2, K)
    assert_close(got, want)
    # The model is left as it was: its own projections are back in place.
    assert all(isinstance(block.layer[1].EncDecAttention.k, torch.nn.Linear) for block in model.decoder.block)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_passages": 4}, "n_passages must be a positive integer dividing"),
        ({"labels": torch.full((2, 4), -100)}, "no valid target token"),
        ({"passes_per_batch": 0}, "passes_per_batch must be"),
        ({"attention_mask": torch.ones(2, 5)}, r"attention_mask must have shape"),
    ],
)
def test_loop_bad_input(kwargs, message):
    model = tiny_t5().eval()
    encoder_outputs, mask, labels = fid_inputs(model)
    arguments = {
        "model": model,
        "encoder_states": encoder_outputs.last_hidden_state,
        "attention_mask": mask,
        "labels": labels,
        "n_passages": K,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        losses.loop_gold_scores(**arguments)
