"""Triton loss kernels against their references: forward and gradient, odd shapes, masks.

On a CPU these run in Triton's interpreter (TRITON_INTERPRET=1, set by `make test`),
so shapes stay small; on CUDA the same tests run compiled.
"""

import pytest
import torch

from atlas_fast import losses, ops
from atlas_fast.reference import emdr_loss_ref, kldivloss_ref
from atlas_fast.testing import assert_close, assert_within_reference_error, kernel_device

pytestmark = pytest.mark.interpret

DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]
SHAPES = [(1, 1), (3, 7), (4, 40), (2, 1024), (17, 20)]  # K = 1, odd, Atlas's 40, 1024, odd B


def _kldiv_triton(*args, **kw):
    return ops.kldivloss(*args, **kw)


def _emdr_triton(*args, **kw):
    return ops.emdr_loss(*args, **kw)


def _inputs(B, K, dtype, with_mask, spread=1.0):
    device = kernel_device()
    scores = (torch.randn(B, K, device=device) * spread).to(dtype).requires_grad_()
    gold = (torch.randn(B, K, device=device) * spread).to(dtype)
    mask = None
    if with_mask:
        mask = torch.rand(B, K, device=device) > 0.3
        mask[0] = False  # a fully masked row
        if B > 1:
            mask[-1, 0] = True
    return scores, gold, mask


def _forward_and_grad(fn, scores, upstream):
    loss = fn(scores)
    (grad,) = torch.autograd.grad(loss, scores, upstream.to(loss.dtype))
    return loss, grad


def _compare_with_reference(kernel_fn, reference_fn, scores, upstream):
    """Loss and gradient of the kernel against the reference at the same precision and in float64."""
    got, got_grad = _forward_and_grad(kernel_fn, scores, upstream)
    want, want_grad = _forward_and_grad(reference_fn, scores, upstream)
    scores64 = scores.detach().double().requires_grad_()
    oracle, oracle_grad = _forward_and_grad(reference_fn, scores64, upstream)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert got_grad.dtype == scores.dtype
    assert_within_reference_error(got, want, oracle)
    assert_within_reference_error(got_grad, want_grad, oracle_grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("B", "K"), SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("temperature", [0.01, 1.0])
def test_kldivloss_kernel_matches_reference(dtype, B, K, reduction, with_mask, temperature):
    scores, gold, mask = _inputs(B, K, dtype, with_mask)
    # The upstream gradient is != 1: random per element for reduction="none".
    upstream = torch.randn(B, K, device=scores.device) if reduction == "none" else torch.tensor(2.5)
    upstream = upstream.to(scores.device)

    def run(fn):
        return lambda s: fn(s, gold.to(s.dtype), temperature, temperature * 0.7, mask, reduction)

    _compare_with_reference(run(_kldiv_triton), run(kldivloss_ref), scores, upstream)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("B", "K", "T"), [(1, 1, 1), (3, 7, 5), (4, 40, 16), (2, 1024, 3), (5, 20, 37)])
@pytest.mark.parametrize("with_mask", [False, True])
def test_emdr_kernel_matches_reference(dtype, B, K, T, with_mask):
    scores, _, mask = _inputs(B, K, dtype, with_mask)
    token_logprobs = torch.randn(B, K, T, device=scores.device).log_softmax(-1).to(dtype)
    labels = torch.randint(0, 50, (B, T), device=scores.device)
    labels[:, T // 2 :] = torch.where(torch.rand(B, T - T // 2, device=scores.device) > 0.5, -100, 1)

    def run(fn):
        return lambda s: fn(s, token_logprobs.to(s.dtype), labels, 0.1, mask)

    _compare_with_reference(run(_emdr_triton), run(emdr_loss_ref), scores, torch.tensor(-3.0, device=scores.device))


def test_kernels_handle_very_large_score_gaps():
    scores, gold, _ = _inputs(3, 20, torch.float32, False, spread=1e4)
    got, got_grad = _forward_and_grad(lambda s: _kldiv_triton(s, gold), scores, torch.tensor(1.0))
    want, want_grad = _forward_and_grad(lambda s: kldivloss_ref(s, gold), scores, torch.tensor(1.0))
    assert torch.isfinite(got) and torch.isfinite(got_grad).all()
    assert_close(got, want)
    assert_close(got_grad, want_grad)


def test_non_contiguous_inputs():
    scores_wide, gold_wide, _ = _inputs(4, 12, torch.float32, False)
    scores, gold = scores_wide[:, ::2], gold_wide[:, ::2]
    got = _kldiv_triton(scores, gold, 0.5, 0.5)
    want = kldivloss_ref(scores, gold, 0.5, 0.5)
    (got_grad,) = torch.autograd.grad(got, scores_wide)
    (want_grad,) = torch.autograd.grad(want, scores_wide)
    assert_close(got, want)
    assert_close(got_grad, want_grad)
    token_logprobs = torch.randn(4, 5, 6, device=scores.device).log_softmax(-1).transpose(1, 2)  # (4, 6, 5)
    labels = torch.randint(0, 5, (4, 5), device=scores.device)
    assert_close(_emdr_triton(scores, token_logprobs, labels, 0.5), emdr_loss_ref(scores, token_logprobs, labels, 0.5))


def test_public_functions_dispatch_to_the_kernels(monkeypatch):
    monkeypatch.setenv("ATLAS_FAST_BACKEND", "triton")
    scores, gold, mask = _inputs(3, 5, torch.float32, True)
    assert_close(losses.kldivloss(scores, gold, mask=mask), kldivloss_ref(scores, gold, mask=mask))
    token_logprobs = torch.randn(3, 5, 4, device=scores.device).log_softmax(-1)
    labels = torch.randint(0, 4, (3, 4), device=scores.device)
    assert_close(losses.emdr_loss(scores, token_logprobs, labels), emdr_loss_ref(scores, token_logprobs, labels))


def test_forced_triton_refuses_what_the_kernel_cannot_take(monkeypatch):
    from atlas_fast._dispatch import TritonUnavailable

    monkeypatch.setenv("ATLAS_FAST_BACKEND", "triton")
    scores = torch.randn(2, 3, dtype=torch.float64, device=kernel_device())
    with pytest.raises(TritonUnavailable, match="float64"):
        losses.kldivloss(scores, scores.clone())
