"""Public losses and their references: Atlas parity, mask semantics, gradcheck, bad input.

Runs the reference backend (ATLAS_FAST_BACKEND=reference); the kernels are compared
with these references in test_losses_kernels.py.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas_fast import losses
from atlas_fast.reference import emdr_loss_ref, kldivloss_ref, retriever_scores_ref
from atlas_fast.reference.atlas import atlas_gold_log_probs, atlas_kldivloss, atlas_logprob
from atlas_fast.testing import assert_close

PARITY = {"rtol": 1e-6, "atol": 1e-7}


@pytest.fixture(autouse=True)
def reference_backend(monkeypatch):
    monkeypatch.setenv("ATLAS_FAST_BACKEND", "reference")


def _grad(loss, x):
    (grad,) = torch.autograd.grad(loss, x)
    return grad


CASES = [  # (B, K, τ_s, τ_g, score spread)
    (4, 20, 0.01, 0.01, 1.0),  # Atlas defaults: most targets underflow to exact 0
    (3, 7, 1.0, 1.0, 1.0),
    (5, 1, 0.01, 0.01, 1.0),  # K = 1: the loss is exactly 0
    (2, 40, 0.01, 0.01, 1e3),  # very large score gaps
    (2, 33, 0.1, 0.05, 5.0),
]


@pytest.mark.parametrize(("B", "K", "tau_s", "tau_g", "spread"), CASES)
def test_kldivloss_matches_atlas(B, K, tau_s, tau_g, spread):
    scores = (torch.randn(B, K) * spread).requires_grad_()
    gold = torch.randn(B, K) * spread
    want = atlas_kldivloss(scores, gold, tau_s, tau_g)
    got = losses.kldivloss(scores, gold, tau_s, tau_g)
    assert_close(got, want, **PARITY)
    assert_close(_grad(2.0 * got, scores), _grad(2.0 * want, scores), **PARITY)


@pytest.mark.parametrize(("B", "K", "tau_s", "tau_g", "spread"), CASES)
def test_emdr_loss_matches_atlas(B, K, tau_s, tau_g, spread):
    T, V = 6, 11
    scores = (torch.randn(B, K) * spread).requires_grad_()
    labels = torch.randint(0, V, (B, T))
    labels[0, -2:] = -100
    gold_logits = torch.randn(B * K, T, V) * spread
    token_logprobs = atlas_gold_log_probs(gold_logits, labels, K, tau_g)
    want = atlas_logprob(scores, token_logprobs, labels, tau_s)
    got = losses.emdr_loss(scores, token_logprobs, labels, tau_s)
    assert_close(got, want, **PARITY)
    assert_close(_grad(2.0 * got, scores), _grad(2.0 * want, scores), **PARITY)


def test_underflowing_targets_contribute_zero():
    scores = torch.zeros(1, 3)
    gold = torch.tensor([[0.0, -100.0, -200.0]])  # softmax(gold/0.01) = [1, 0, 0] exactly
    pointwise = losses.kldivloss(scores, gold, reduction="none")
    assert pointwise[0, 1] == 0 and pointwise[0, 2] == 0
    assert_close(pointwise[0, 0], torch.tensor(torch.log(torch.tensor(3.0)).item()))


def test_mask_equals_dropping_the_passages():
    scores, gold = torch.randn(1, 6), torch.randn(1, 6)
    mask = torch.tensor([[True, False, True, True, False, True]])
    kept = mask[0]
    for reduction in ("sum", "mean", "batchmean"):
        masked = losses.kldivloss(scores, gold, 0.5, 0.3, mask=mask, reduction=reduction)
        dropped = losses.kldivloss(scores[:, kept], gold[:, kept], 0.5, 0.3, reduction=reduction)
        assert_close(masked, dropped)
    token_logprobs, labels = torch.randn(1, 6, 4).log_softmax(-1), torch.tensor([[1, 2, -100, 3]])
    assert_close(
        losses.emdr_loss(scores, token_logprobs, labels, 0.5, mask=mask),
        losses.emdr_loss(scores[:, kept], token_logprobs[:, kept], labels, 0.5),
    )


def test_fully_masked_row_contributes_zero_and_leaves_the_mean():
    scores = torch.randn(3, 5, requires_grad=True)
    gold = torch.randn(3, 5)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    keep = torch.tensor([0, 2])
    for reduction in ("mean", "batchmean", "sum"):
        loss = losses.kldivloss(scores, gold, mask=mask, reduction=reduction)
        assert_close(loss, losses.kldivloss(scores[keep], gold[keep], reduction=reduction))
        assert torch.all(_grad(loss, scores)[1] == 0)
    assert torch.all(losses.kldivloss(scores, gold, mask=mask, reduction="none")[1] == 0)
    token_logprobs, labels = torch.randn(3, 5, 4).log_softmax(-1), torch.randint(0, 9, (3, 4))
    emdr = losses.emdr_loss(scores, token_logprobs, labels, mask=mask)
    assert_close(emdr, losses.emdr_loss(scores[keep], token_logprobs[keep], labels[keep]))
    assert torch.all(_grad(emdr, scores)[1] == 0)


def test_nothing_to_average_gives_zero_not_nan():
    scores = torch.randn(2, 3, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    loss = losses.kldivloss(scores, torch.randn(2, 3), mask=mask)
    assert loss.item() == 0 and torch.all(_grad(loss, scores) == 0)
    labels = torch.full((2, 4), -100)
    emdr = losses.emdr_loss(scores, torch.randn(2, 3, 4).log_softmax(-1), labels)
    assert emdr.item() == 0 and torch.all(_grad(emdr, scores) == 0)


def test_reductions_relate_as_documented():
    scores, gold = torch.randn(4, 5), torch.randn(4, 5)
    pointwise = losses.kldivloss(scores, gold, 0.2, 0.2, reduction="none")
    assert pointwise.shape == (4, 5)
    assert_close(losses.kldivloss(scores, gold, 0.2, 0.2, reduction="sum"), pointwise.sum())
    assert_close(losses.kldivloss(scores, gold, 0.2, 0.2, reduction="mean"), pointwise.sum() / 20)
    assert_close(losses.kldivloss(scores, gold, 0.2, 0.2, reduction="batchmean"), pointwise.sum() / 4)


@settings(max_examples=50, deadline=None)
@given(
    B=st.integers(1, 4),
    K=st.integers(1, 9),
    tau=st.floats(0.01, 2.0),
    seed=st.integers(0, 2**16),
)
def test_kldivloss_is_nonnegative_and_zero_when_distributions_agree(B, K, tau, seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, K, generator=generator, dtype=torch.float64)
    assert losses.kldivloss(scores, scores.clone(), tau, tau, reduction="sum").item() == pytest.approx(0, abs=1e-9)
    gold = torch.randn(B, K, generator=generator, dtype=torch.float64)
    assert losses.kldivloss(scores, gold, tau, tau, reduction="none").sum(-1).min() >= -1e-12


def test_low_precision_inputs_compute_in_float32():
    scores, gold = torch.randn(4, 20), torch.randn(4, 20)
    for dtype in (torch.float16, torch.bfloat16):
        loss = losses.kldivloss(scores.to(dtype), gold.to(dtype))
        assert loss.dtype == torch.float32
        assert_close(loss, kldivloss_ref(scores.to(dtype).float(), gold.to(dtype).float()))


def test_references_pass_float64_gradcheck():
    scores = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    gold = torch.randn(3, 5, dtype=torch.float64)
    mask = torch.rand(3, 5) > 0.3
    mask[0] = False
    for reduction in ("mean", "batchmean", "sum", "none"):
        assert torch.autograd.gradcheck(lambda s, r=reduction: kldivloss_ref(s, gold, 0.5, 0.7, mask, r), (scores,))
    token_logprobs = torch.randn(3, 5, 4, dtype=torch.float64).log_softmax(-1)
    labels = torch.tensor([[1, 2, -100, 0], [3, -100, -100, -100], [0, 1, 2, 3]])
    assert torch.autograd.gradcheck(lambda s: emdr_loss_ref(s, token_logprobs, labels, 0.5, mask), (scores,))
    query = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    passages = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(retriever_scores_ref, (query, passages))


def test_retriever_scores_is_scaled_dot_product():
    query, passages = torch.randn(2, 16), torch.randn(2, 3, 16)
    want = torch.stack([passages[b] @ query[b] for b in range(2)]) / 4.0
    assert_close(losses.retriever_scores(query, passages), want)


def test_modules_hold_temperatures():
    scores, gold = torch.randn(2, 5), torch.randn(2, 5)
    module = losses.KLDivLoss(temperature_score=0.3, temperature_gold=0.2, reduction="sum")
    assert_close(module(scores, gold), losses.kldivloss(scores, gold, 0.3, 0.2, reduction="sum"))
    assert "temperature_score=0.3" in repr(module)
    token_logprobs, labels = torch.randn(2, 5, 3).log_softmax(-1), torch.randint(0, 4, (2, 3))
    assert_close(
        losses.EMDRLoss(0.4)(scores, token_logprobs, labels),
        losses.emdr_loss(scores, token_logprobs, labels, 0.4),
    )


B, K, T = 2, 3, 4


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: losses.kldivloss(torch.randn(B, K), torch.randn(B, K + 1)),
            r"gold_scores must have shape \(B, K\)",
        ),
        (lambda: losses.kldivloss(torch.randn(B, K, 1), torch.randn(B, K)), "scores must have 2 dimensions"),
        (lambda: losses.kldivloss(torch.randint(0, 3, (B, K)), torch.randn(B, K)), "scores must be float16"),
        (lambda: losses.kldivloss([[1.0]], torch.randn(B, K)), "scores must be a torch.Tensor"),
        (
            lambda: losses.kldivloss(torch.randn(B, K), torch.randn(B, K), 0.0),
            "temperature_score must be a finite",
        ),
        (
            lambda: losses.kldivloss(torch.randn(B, K), torch.randn(B, K), 0.1, -1),
            "temperature_gold must be a finite",
        ),
        (
            lambda: losses.kldivloss(torch.randn(B, K), torch.randn(B, K), reduction="avg"),
            "reduction must be one of",
        ),
        (
            lambda: losses.kldivloss(torch.randn(B, K), torch.randn(B, K), mask=torch.ones(B, K)),
            "mask must be a bool",
        ),
        (
            lambda: losses.kldivloss(torch.randn(B, K), torch.randn(B, K), mask=torch.ones(B, dtype=torch.bool)),
            r"mask must have shape \(B, K\)",
        ),
        (
            lambda: losses.kldivloss(torch.tensor([[float("nan"), 0.0]]), torch.randn(1, 2)),
            "scores contains NaN",
        ),
        (
            lambda: losses.kldivloss(torch.randn(1, 2), torch.tensor([[float("inf"), 0.0]])),
            "gold_scores contains NaN",
        ),
        (
            lambda: losses.kldivloss(torch.randn(B, K), torch.randn(B, K, requires_grad=True)),
            r"gold_scores requires grad.*detach",
        ),
        (
            lambda: losses.kldivloss(torch.randn(B, K), torch.randn(B, K, device="meta")),
            "must be on one device",
        ),
        (
            lambda: losses.emdr_loss(torch.randn(B, K), torch.randn(B, K + 1, T), torch.zeros(B, T, dtype=torch.long)),
            r"token_logprobs must have shape \(B, K, T\)",
        ),
        (
            lambda: losses.emdr_loss(torch.randn(B, K), torch.randn(B, K, T), torch.zeros(B, T)),
            "labels must be an int64",
        ),
        (
            lambda: losses.emdr_loss(torch.randn(B, K), torch.randn(B, K, T), torch.zeros(B, T + 1, dtype=torch.long)),
            r"labels must have shape \(B, T\)",
        ),
        (
            lambda: losses.emdr_loss(
                torch.randn(B, K), torch.full((B, K, T), float("-inf")), torch.zeros(B, T, dtype=torch.long)
            ),
            "token_logprobs contains NaN",
        ),
        (
            lambda: losses.retriever_scores(torch.randn(B, 8), torch.randn(B, K, 4)),
            r"passage_emb must have shape",
        ),
        (lambda: losses.KLDivLoss(temperature_score=float("inf")), "temperature_score must be a finite"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
