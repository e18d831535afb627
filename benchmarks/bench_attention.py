"""FiD cross-attention: Atlas's materialised path vs SDPA and FlexAttention (no mass), the reference and the kernels.

Atlas computes the (B, NH, T, K·L) attention map to read ADist's per-passage mass;
the reference holds 4 passages of logits at a time. Forward runs under no_grad
(the gold-score pass); forward+backward is the reader's training pass. On CUDA the
grid is B ∈ {1, 4}, NH ∈ {8, 32}, T ∈ {16, 32}, K ∈ {40, 100}, L ∈ {256, 512},
Dh = 64, with the fused Triton kernels (forward with mass, backward for q, k, v); on a CPU,
B=1, NH=8, T=16, L=256 only. FlexAttention runs compiled (Inductor) on both.
"""

import itertools

import pytest
import torch
from harness import run_provider

from atlas_fast import ops
from atlas_fast.reference.attention import fid_cross_attention_naive, fid_cross_attention_ref

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DH = 64
if DEVICE.type == "cuda":
    SHAPES = list(itertools.product([1, 4], [8, 32], [16, 32], [40, 100], [256, 512]))  # B, NH, T, K, L
else:
    SHAPES = [(1, 8, 16, 40, 256), (1, 8, 16, 100, 256)]
PROVIDERS = ["naive_materialised", "sdpa_no_mass", "flex_no_mass", "reference_vnorm", "triton_vnorm"]


_compiled_flex = None


def _flex_attention(q, k, v, mask):
    """FlexAttention compiled, as it is meant to run (eager flex_attention is its unfused reference)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)

    def padding(score, batch, head, query, key):
        return torch.where(mask[batch, key], score, torch.finfo(score.dtype).min)

    return _compiled_flex(q, k, v, score_mod=padding, scale=1.0)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize(("B", "NH", "T", "n_passages", "L"), SHAPES)
def test_fid_cross_attention(benchmark, provider, mode, B, NH, T, n_passages, L):
    if provider == "triton_vnorm" and DEVICE.type != "cuda":
        pytest.skip(f"{provider} is benchmarked on CUDA only")
    if provider == "flex_no_mass" and benchmark.disabled:
        pytest.skip("torch.compile is left out of the smoke run (compile time)")
    if provider == "flex_no_mass" and DEVICE.type == "cpu" and mode != "forward":
        pytest.skip(f"FlexAttention has no backward on CPU (torch {torch.__version__})")
    torch.manual_seed(0)
    grad = mode != "forward"
    q = torch.randn(B, NH, T, DH, device=DEVICE, requires_grad=grad)
    k = torch.randn(B, NH, n_passages * L, DH, device=DEVICE, requires_grad=grad)
    v = torch.randn(B, NH, n_passages * L, DH, device=DEVICE, requires_grad=grad)
    mask = torch.rand(B, n_passages * L, device=DEVICE) > 0.1

    def attend():
        if provider == "naive_materialised":
            return fid_cross_attention_naive(q, k, v, mask, n_passages, passage_mass="vnorm")[0]
        if provider == "sdpa_no_mass":
            return fid_cross_attention_ref(q, k, v, mask, n_passages)
        if provider == "flex_no_mass":
            return _flex_attention(q, k, v, mask)
        if provider == "triton_vnorm":
            return ops.fid_cross_attention(q, k, v, mask, n_passages, passage_mass="vnorm")[0]
        return fid_cross_attention_ref(q, k, v, mask, n_passages, passage_mass="vnorm")[0]

    if mode == "forward":

        def fn():
            with torch.no_grad():
                return attend()

    else:

        def fn():
            return torch.autograd.grad(attend().sum(), (q, k, v))

    run_provider(
        benchmark,
        fn,
        op="fid_cross_attention",
        shape=f"B={B} NH={NH} T={T} K={n_passages} L={L} Dh={DH}",
        mode=mode,
        provider=provider,
        baseline="naive_materialised",
        device=DEVICE,
    )
