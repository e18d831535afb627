"""torch.library.opcheck on every registered op (atlas_fast/ops.py): schema, fake implementation, autograd
registration and AOT dispatch. The ops are the Triton kernels: under TRITON_INTERPRET=1 on a CPU, compiled on CUDA
(`make gpu-check` runs the `interpret` marker there)."""

import pytest
import torch

from atlas_fast.testing import kernel_device

pytestmark = pytest.mark.interpret


@pytest.fixture
def device():
    import atlas_fast.ops  # noqa: F401  registers the ops

    return kernel_device()


def _check(op, args, kwargs=None):
    torch.library.opcheck(op, args, kwargs or {})


@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
@pytest.mark.parametrize("masked", [False, True])
def test_kldivloss_op(device, reduction, masked):
    scores = torch.randn(3, 5, device=device, requires_grad=True)
    mask = (torch.rand(3, 5, device=device) > 0.3) if masked else None
    with_grad = reduction != "none"
    _check(
        torch.ops.atlas_fast.kldivloss,
        (scores, torch.randn(3, 5, device=device), 0.1, 0.05, mask, reduction, with_grad),
    )
    if reduction == "none":
        arguments = (
            torch.randn(3, 5, device=device),
            scores.detach(),
            torch.randn(3, 5, device=device),
            0.1,
            0.05,
            mask,
        )
        _check(torch.ops.atlas_fast.kldivloss_backward, arguments)


@pytest.mark.parametrize("masked", [False, True])
def test_emdr_loss_op(device, masked):
    scores = torch.randn(3, 5, device=device, requires_grad=True)
    logprobs = torch.randn(3, 5, 4, device=device).log_softmax(-1)
    labels = torch.randint(0, 9, (3, 4), device=device)
    labels[0, -1] = -100
    mask = (torch.rand(3, 5, device=device) > 0.3) if masked else None
    _check(torch.ops.atlas_fast.emdr_loss, (scores, logprobs, labels, 0.1, mask, True))


def test_token_logprobs_op(device):
    hidden, weight = torch.randn(6, 16, device=device), torch.randn(40, 16, device=device)
    labels = torch.randint(0, 40, (6,), device=device)
    labels[2] = -100
    _check(torch.ops.atlas_fast.token_logprobs, (hidden, weight, labels, 1.0))


@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
@pytest.mark.parametrize("passage_mass", ["prob", "vnorm"])
def test_fid_cross_attention_ops(device, passage_mass, dropout_p):
    B, NH, T, K, L, D = 1, 2, 3, 2, 16, 16
    # q as Hugging Face attention hands it over: a transposed view, whose strides the outputs must not follow.
    q = torch.randn(B, T, NH, D, device=device).transpose(1, 2).requires_grad_()
    k = torch.randn(B, NH, K * L, D, device=device, requires_grad=True)
    v = torch.randn(B, NH, K * L, D, device=device, requires_grad=True)
    mask = torch.rand(B, K * L, device=device) > 0.2
    seed = torch.tensor(7, dtype=torch.int64, device=device)  # a device tensor, as the kernels read it
    arguments = (q, k, v, mask, K, 1.0, passage_mass, dropout_p, seed)
    _check(torch.ops.atlas_fast.fid_cross_attention, arguments)
    out, _, row_max, row_sum = torch.ops.atlas_fast.fid_cross_attention(*arguments)
    detached = [t.detach() for t in (q, k, v)]
    backward = (torch.randn_like(out), *detached, mask, out.detach(), row_max, row_sum, 1.0, dropout_p, seed)
    _check(torch.ops.atlas_fast.fid_cross_attention_backward, backward)


@pytest.mark.parametrize("k", [3, 40])  # 40 > n: padded with (−inf, −1)
def test_index_topk_op(device, k):
    rows = torch.randn(33, 16, device=device)
    ids = torch.arange(100, 133, device=device)
    _check(torch.ops.atlas_fast.index_topk, (torch.randn(2, 16, device=device), rows, ids, k))
