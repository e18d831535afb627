"""Helpers shared by atlas_fast's tests and benchmarks (and useful to users testing their own ops)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = [
    "assert_close",
    "assert_within_reference_error",
    "clustered_embeddings",
    "default_tolerance",
    "kernel_device",
    "peak_memory_bytes",
]

# (rtol, atol) per dtype when comparing a kernel with its fp32/fp64 reference.
_TOLERANCE = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) that a kernel computing in fp32 must meet for inputs of ``dtype``."""
    return _TOLERANCE[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, dtype: torch.dtype | None = None, **kw) -> None:
    """torch.testing.assert_close on float32 copies, tolerance taken from ``dtype`` unless given.

    The absolute tolerance is at least rtol · max|expected|: an element that is the
    difference of two large terms (a softmax gradient, for one) carries the rounding
    error of those terms, not of itself.

    Args:
        actual, expected: tensors of the same shape; compared in float32 (float64 if either is).
        dtype: the input dtype the tolerance is chosen for; defaults to ``actual.dtype``.
        **kw: rtol/atol overrides, passed to torch.testing.assert_close.
    """
    rtol, atol = default_tolerance(dtype or actual.dtype)
    compare_dtype = torch.float64 if torch.float64 in (actual.dtype, expected.dtype) else torch.float32
    actual = actual.detach().to(compare_dtype).cpu()
    expected = expected.detach().to(compare_dtype).cpu()
    rtol = kw.pop("rtol", rtol)
    atol = kw.pop("atol", atol)
    if expected.numel() > 0:
        atol = max(atol, rtol * expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, **kw)


def assert_within_reference_error(
    actual: torch.Tensor,
    reference: torch.Tensor,
    oracle: torch.Tensor,
    *,
    slack: float = 2.0,
    rtol: float = 1e-6,
) -> None:
    """flash-attention's tolerance rule: the kernel's error is at most ``slack`` × PyTorch's own.

    Args:
        actual: the kernel's result.
        reference: the reference computed at the kernel's working precision.
        oracle: the reference computed in float64 from the same inputs.
        slack: allowed ratio of the two errors.
        rtol: floor of the allowed error, relative to max|oracle| (for when PyTorch's error is 0).
    """
    oracle = oracle.detach().double().cpu()
    kernel_error = (actual.detach().double().cpu() - oracle).abs().max().item()
    reference_error = (reference.detach().double().cpu() - oracle).abs().max().item()
    floor = rtol * oracle.abs().max().item() + 1e-12
    assert kernel_error <= slack * reference_error + floor, (
        f"kernel error {kernel_error:.3g} exceeds {slack} x reference error {reference_error:.3g} + {floor:.3g}"
    )


def kernel_device() -> torch.device:
    """Where kernel tests run: CUDA when present, else the CPU (Triton's interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated while ``fn`` runs, above what was allocated before it.

    CUDA: the caching allocator's peak counter. CPU: torch's profiler with memory
    profiling; allocations are replayed in time order and the running maximum taken.
    Memory allocated outside torch (numpy, the C++ module) is not seen on CPU.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda event: event.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def clustered_embeddings(
    n: int,
    dim: int,
    seed: int = 0,
    *,
    centres: int = 200,
    spread: float = 0.5,
    queries: int = 32,
    query_spread: float = 0.3,
    unit: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectors with the structure of document embeddings, which index recall and approximate search are tested on.

    Returns:
        rows: (n, dim) float32, each a random one of ``centres`` standard normal centres plus normal noise of
            standard deviation ``spread``;
        queries: (queries, dim) float32, each a random row plus noise of ``query_spread``.
        With ``unit``, both are rescaled to unit norm.
    """
    rng = np.random.default_rng(seed)
    middles = rng.standard_normal((centres, dim)).astype(np.float32)
    rows = middles[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    near = rows[rng.integers(0, n, queries)] + query_spread * rng.standard_normal((queries, dim)).astype(np.float32)
    if unit:
        rows, near = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (rows, near))
    return rows, near
