"""FiD cross-attention: Atlas's materialised path vs SDPA (no mass) and the chunked reference (with mass).

Atlas computes the (B, NH, T, K·L) attention map to read ADist's per-passage mass;
the reference holds 4 passages of logits at a time. Forward runs under no_grad
(the gold-score pass); forward+backward is the reader's training pass. CPU-sized
shapes (B=1, NH=8, T=16, L=256, Dh=64) on every device; the fused Triton kernels
(forward with mass, backward for q, k, v) run on CUDA only.
"""

import pytest
import torch
from harness import run_provider

from atlas_fast.reference.attention import fid_cross_attention_naive, fid_cross_attention_ref

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
B, NH, T, L, DH = 1, 8, 16, 256, 64


@pytest.mark.parametrize("provider", ["naive_materialised", "sdpa_no_mass", "reference_vnorm", "triton_vnorm"])
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("n_passages", [40, 100])
def test_fid_cross_attention(benchmark, provider, mode, n_passages):
    if provider == "triton_vnorm" and DEVICE.type != "cuda":
        pytest.skip("the fused kernel is benchmarked on CUDA only")
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
        if provider == "triton_vnorm":
            from atlas_fast.kernels.fid_attention import fid_cross_attention_triton

            return fid_cross_attention_triton(q, k, v, mask, n_passages, passage_mass="vnorm")[0]
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
