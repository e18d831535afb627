"""Helpers shared by atlas_fast's tests and benchmarks (and useful to users testing their own ops)."""

from __future__ import annotations

import torch

__all__ = ["assert_close", "default_tolerance", "kernel_device"]

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


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, dtype: torch.dtype | None = None, **kw
) -> None:
    """torch.testing.assert_close on float32 copies, tolerance taken from ``dtype`` unless given.

    Args:
        actual, expected: tensors of the same shape; compared in float32 (float64 if either is).
        dtype: the input dtype the tolerance is chosen for; defaults to ``actual.dtype``.
        **kw: rtol/atol overrides, passed to torch.testing.assert_close.
    """
    compare_dtype = torch.float64 if torch.float64 in (actual.dtype, expected.dtype) else torch.float32
    rtol, atol = default_tolerance(dtype or actual.dtype)
    kw.setdefault("rtol", rtol)
    kw.setdefault("atol", atol)
    torch.testing.assert_close(
        actual.detach().to(compare_dtype).cpu(), expected.detach().to(compare_dtype).cpu(), **kw
    )


def kernel_device() -> torch.device:
    """Where kernel tests run: CUDA when present, else the CPU (Triton's interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
