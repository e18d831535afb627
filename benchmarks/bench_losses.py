"""Retriever losses: Atlas's eager expression vs torch.compile of it, Liger, the reference, the Triton kernel and
atlas_fast's public loss under torch.compile (atlas_fast_compiled: the reference traced and fused by Inductor on a
CPU, the triton_op's kernels on CUDA).

Modes: forward (with a graph, as in training: the Triton forward also computes the
gradient), backward (the graph is built once; autograd.grad reruns it), and
forward+backward. The Triton kernels and Liger only run on CUDA; torch.compile is
left out of the --benchmark-disable smoke run, where compiling would dominate.
"""

import importlib.util

import pytest
import torch
from harness import run_provider

from atlas_fast import losses, ops
from atlas_fast.reference import emdr_loss_ref, kldivloss_ref
from atlas_fast.reference.atlas import atlas_kldivloss, atlas_logprob

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BATCHES = [8, 64, 512]
PASSAGES = [20, 40, 100, 1024]
MODES = ["forward", "backward", "forward+backward"]
TARGET_TOKENS = 16

# One compiled graph per shape and mode: raise dynamo's recompile limit above that count.
torch._dynamo.config.recompile_limit = 256


def _liger_kldiv():
    from liger_kernel.transformers import LigerKLDIVLoss

    # Liger takes log-probabilities as input and probabilities as target, like torch's KLDivLoss.
    liger = LigerKLDIVLoss(reduction="mean")

    def loss(score, gold_score, temperature_score=0.01, temperature_gold=0.01):
        return liger(
            torch.log_softmax(score / temperature_score, dim=-1), torch.softmax(gold_score / temperature_gold, dim=-1)
        )

    return loss


def _triton(name):
    """The registered op on its Triton path (what atlas_fast.losses runs on CUDA), without argument checks."""
    op = getattr(ops, name)
    return lambda *args, **kwargs: op(*args, **kwargs)


def _loss_fn(op, provider, benchmark):
    """The loss callable for ``provider``, or pytest.skip with the reason it cannot run here."""
    atlas = atlas_kldivloss if op == "kldivloss" else atlas_logprob
    if provider == "atlas_eager":
        return atlas
    if provider == "torch_compile":
        if benchmark.disabled:
            pytest.skip("torch.compile is left out of the smoke run (compile time)")
        return torch.compile(atlas, dynamic=False)
    if provider == "reference":
        return kldivloss_ref if op == "kldivloss" else emdr_loss_ref
    if provider == "atlas_fast_compiled":
        if benchmark.disabled:
            pytest.skip("torch.compile is left out of the smoke run (compile time)")
        return torch.compile(getattr(losses, op), fullgraph=True, dynamic=False)
    if DEVICE.type != "cuda":
        pytest.skip(f"{provider} runs on CUDA only")
    if provider == "liger":
        if op != "kldivloss" or importlib.util.find_spec("liger_kernel") is None:
            pytest.skip("Liger-Kernel is not installed or has no such loss")
        return _liger_kldiv()
    return _triton(op)


def _benchmark_loss(benchmark, op, provider, mode, B, K, make_loss_inputs):
    loss_fn = _loss_fn(op, provider, benchmark)
    scores = torch.randn(B, K, device=DEVICE, requires_grad=True)
    other_inputs = make_loss_inputs(B, K)

    def forward():
        return loss_fn(scores, *other_inputs)

    if mode == "forward":
        fn = forward
    elif mode == "backward":
        loss = forward()

        def fn():
            return torch.autograd.grad(loss, scores, retain_graph=True)

    else:

        def fn():
            return torch.autograd.grad(forward(), scores)

    run_provider(
        benchmark, fn, op=op, shape=f"B={B} K={K}", mode=mode, provider=provider, baseline="atlas_eager", device=DEVICE
    )


@pytest.mark.parametrize(
    "provider", ["atlas_eager", "torch_compile", "liger", "reference", "triton", "atlas_fast_compiled"]
)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("K", PASSAGES)
@pytest.mark.parametrize("B", BATCHES)
def test_kldivloss(benchmark, provider, mode, B, K):
    def gold(B, K):
        return (torch.randn(B, K, device=DEVICE),)

    _benchmark_loss(benchmark, "kldivloss", provider, mode, B, K, gold)


@pytest.mark.parametrize("provider", ["atlas_eager", "torch_compile", "reference", "triton", "atlas_fast_compiled"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("K", PASSAGES)
@pytest.mark.parametrize("B", BATCHES)
def test_emdr_loss(benchmark, provider, mode, B, K):
    def gold_side(B, K):
        token_logprobs = torch.randn(B, K, TARGET_TOKENS, device=DEVICE).log_softmax(-1)
        labels = torch.randint(0, 100, (B, TARGET_TOKENS), device=DEVICE)
        labels[:, -3:] = -100
        return token_logprobs, labels

    _benchmark_loss(benchmark, "emdr_loss", provider, mode, B, K, gold_side)
