"""FiD cross-attention reference: against the materialised computation, ADist end to end, bad input."""

import pytest
import torch

from atlas_fast import losses, ops
from atlas_fast.attention import fid_cross_attention
from atlas_fast.reference.atlas import atlas_normssum
from atlas_fast.reference.attention import fid_cross_attention_naive, fid_cross_attention_ref
from atlas_fast.testing import assert_close, kernel_device


def _inputs(B=2, NH=3, T=5, K=5, L=7, Dh=8, dtype=torch.float32):
    q = torch.randn(B, NH, T, Dh, dtype=dtype, requires_grad=True)
    k = torch.randn(B, NH, K * L, Dh, dtype=dtype, requires_grad=True)
    v = torch.randn(B, NH, K * L, Dh, dtype=dtype, requires_grad=True)
    mask = torch.rand(B, K * L) > 0.3
    mask[0, L : 2 * L] = False  # a fully padded passage
    mask[:, 0] = True
    return q, k, v, mask


@pytest.mark.parametrize("passage_mass", [None, "prob", "vnorm"])
@pytest.mark.parametrize("passages_per_chunk", [1, 2, 100])
@pytest.mark.parametrize("scale", [1.0, 0.125])
def test_reference_matches_materialised_attention(passage_mass, passages_per_chunk, scale):
    q, k, v, mask = _inputs()
    got = fid_cross_attention_ref(q, k, v, mask, 5, scale, passage_mass, passages_per_chunk)
    want = fid_cross_attention_naive(q, k, v, mask, 5, scale, passage_mass)
    got_out, want_out = (got[0], want[0]) if passage_mass else (got, want)
    assert_close(got_out, want_out)
    upstream = torch.randn_like(got_out)
    got_grads = torch.autograd.grad(got_out, (q, k, v), upstream)
    want_grads = torch.autograd.grad(want_out, (q, k, v), upstream)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        assert_close(got_grad, want_grad)
    if passage_mass:
        assert got[1].shape == (2, 3, 5, 5) and not got[1].requires_grad
        assert_close(got[1], want[1])
        assert torch.all(got[1][0, :, :, 1] == 0)  # the padded passage gets nothing
    if passage_mass == "prob":
        assert_close(got[1].sum(-1), torch.ones(2, 3, 5))  # a distribution over passages


def test_materialised_oracle_matches_a_plain_softmax():
    q, k, v, mask = _inputs()
    logits = q @ k.transpose(-1, -2)
    logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
    assert_close(fid_cross_attention_naive(q, k, v, mask, 5), torch.softmax(logits, -1) @ v)


def test_fully_padded_rows_stay_finite_like_t5():
    q, k, v, mask = _inputs()
    mask[1] = False
    out, mass = fid_cross_attention(q, k, v, mask, 5, passage_mass="vnorm")
    assert torch.isfinite(out).all() and torch.all(mass[1] == 0)
    assert_close(out[1], v[1].mean(dim=1, keepdim=True).expand_as(out[1]))  # uniform, as T5's additive mask gives


def test_low_precision_inputs():
    q, k, v, mask = _inputs(dtype=torch.float16)
    out, mass = fid_cross_attention(q, k, v, mask, 5, passage_mass="prob")
    want = fid_cross_attention_naive(q.float(), k.float(), v.float(), mask, 5)
    assert out.dtype == torch.float16 and mass.dtype == torch.float32
    assert_close(out, want, dtype=torch.float16)


def test_adist_from_the_op_matches_atlas_normssum():
    n_layers, B, NH, T, K, L, Dh = 3, 2, 4, 6, 3, 5, 8
    mask = torch.rand(B, K * L) > 0.2
    mask[:, 0] = True
    labels = torch.randint(0, 9, (B, T))
    labels[0, 4:] = -100
    layer_mass, layer_maps = [], []
    for _ in range(n_layers):
        q, k, v = torch.randn(B, NH, T, Dh), torch.randn(B, NH, K * L, Dh), torch.randn(B, NH, K * L, Dh)
        _, mass = fid_cross_attention(q, k, v, mask, K, passage_mass="vnorm")
        layer_mass.append(mass.mean(dim=1))  # head mean, (B, T, K)
        logits = (q @ k.transpose(-1, -2)).masked_fill(~mask[:, None, None, :], float("-inf"))
        layer_maps.append((torch.softmax(logits, -1) * v.norm(dim=-1)[:, :, None, :]).mean(dim=1))
    got = losses.adist_gold_scores(torch.stack(layer_mass).sum(0), labels, n_layers)
    want = atlas_normssum(torch.stack(layer_maps), mask, labels, K)
    assert_close(got, want)


B, NH, T, KL, Dh = 1, 2, 3, 8, 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": torch.randn(B, NH + 1, KL, Dh)}, r"k must have shape \(B, NH, K·L, Dh\)"),
        ({"v": torch.randn(B, NH, KL - 1, Dh)}, r"v must have shape"),
        ({"v": torch.randn(B, NH, KL, Dh).double()}, "share one dtype"),
        ({"n_passages": 3}, "do not split into n_passages = 3"),
        ({"n_passages": 0}, "n_passages must be a positive integer"),
        ({"attention_mask": torch.ones(B, KL)}, "attention_mask must be a bool or integer"),
        ({"attention_mask": torch.ones(B, KL + 1, dtype=torch.bool)}, r"attention_mask must have shape \(B, K·L\)"),
        ({"scale": 0.0}, "scale must be a finite number > 0"),
        ({"passage_mass": "norm"}, "passage_mass must be one of"),
    ],
)
def test_bad_input_is_a_clear_value_error(kwargs, message):
    arguments = {
        "q": torch.randn(B, NH, T, Dh),
        "k": torch.randn(B, NH, KL, Dh),
        "v": torch.randn(B, NH, KL, Dh),
        "attention_mask": torch.ones(B, KL, dtype=torch.bool),
        "n_passages": 2,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        fid_cross_attention(**arguments)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)])
@pytest.mark.parametrize(("T", "K", "L", "Dh"), [(5, 5, 7, 8), (17, 3, 70, 20), (1, 1, 16, 16)])
@pytest.mark.parametrize("passage_mass", ["prob", "vnorm"])
def test_fused_kernel_matches_reference(dtype, T, K, L, Dh, passage_mass):

    q, k, v, mask = (t.detach().to(kernel_device()) for t in _inputs(B=2, NH=2, T=T, K=K, L=L, Dh=Dh))
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    mask[1] = False  # a row with no real key: uniform, as T5
    out, mass = ops.fid_cross_attention(q, k, v, mask, K, 0.5, passage_mass)
    want_out, want_mass = fid_cross_attention_ref(q, k, v, mask, K, 0.5, passage_mass)
    assert out.dtype == dtype and mass.dtype == torch.float32 and not mass.requires_grad
    assert_close(out, want_out, dtype=dtype)
    assert_close(mass, want_mass, dtype=dtype)
    upstream = 2.0 * torch.randn_like(out)
    got_grads = torch.autograd.grad(out, (q, k, v), upstream)
    want_grads = torch.autograd.grad(want_out, (q, k, v), upstream)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        assert got_grad.dtype == dtype
        assert_close(got_grad, want_grad, dtype=dtype)


@pytest.mark.interpret
def test_public_op_dispatches_to_the_kernel(monkeypatch):
    from atlas_fast._dispatch import TritonUnavailable

    monkeypatch.setenv("ATLAS_FAST_BACKEND", "triton")
    q, k, v, mask = (t.to(kernel_device()) for t in _inputs())
    out, mass = fid_cross_attention(q, k, v, mask, 5, passage_mass="vnorm")
    want_out, want_mass = fid_cross_attention_naive(q, k, v, mask, 5, passage_mass="vnorm")
    assert_close(out, want_out)
    assert_close(mass, want_mass)
    assert_close(torch.autograd.grad(out.sum(), q)[0], torch.autograd.grad(want_out.sum(), q)[0])
    with pytest.raises(TritonUnavailable, match="float64"):
        fid_cross_attention(q.double(), k.double(), v.double(), mask, 5, passage_mass="vnorm")


@pytest.mark.interpret
def test_kernel_dropout_replays_from_its_seed():
    """Output and gradients equal attention with the replayed Philox mask; the mass ignores dropout."""
    from atlas_fast.kernels.attention import dropout_keep_scale

    q, k, v, mask = (t.detach().to(kernel_device()).requires_grad_(t.requires_grad) for t in _inputs())
    out, mass = ops.fid_cross_attention(q, k, v, mask, 5, 0.5, "vnorm", dropout_p=0.3, seed=1234)
    again, _ = ops.fid_cross_attention(q, k, v, mask, 5, 0.5, "vnorm", dropout_p=0.3, seed=1234)
    other, _ = ops.fid_cross_attention(q, k, v, mask, 5, 0.5, "vnorm", dropout_p=0.3, seed=99)
    assert torch.equal(out, again) and not torch.equal(out, other)
    keep = dropout_keep_scale((2, 3, 5, 35), 0.3, 1234, q.device)
    assert 0.5 < (keep > 0).float().mean() < 0.9
    assert_close(keep.unique(), torch.tensor([0.0, 1 / 0.7]))
    logits = (q @ k.transpose(-1, -2)) * 0.5 + torch.where(mask, 0.0, torch.finfo(torch.float32).min)[:, None, None]
    want = (torch.softmax(logits, -1) * keep) @ v
    assert_close(out, want)
    assert_close(mass, fid_cross_attention_naive(q, k, v, mask, 5, 0.5, "vnorm")[1])
    upstream = torch.randn_like(out)
    for got_grad, want_grad in zip(
        torch.autograd.grad(out, (q, k, v), upstream), torch.autograd.grad(want, (q, k, v), upstream), strict=True
    ):
        assert_close(got_grad, want_grad)
