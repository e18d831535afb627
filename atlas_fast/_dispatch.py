"""Which implementation of an op runs, decided per call from the tensors' device.

ATLAS_FAST_BACKEND selects:
- ``auto`` (default): the Triton kernel for CUDA tensors when Triton imports, for
  CPU tensors only under ``TRITON_INTERPRET=1`` (Triton's interpreter, for tests);
  the PyTorch reference otherwise, and whenever the kernel does not support the
  inputs (it says why).
- ``triton``: the Triton kernel, or an error saying why it cannot run.
- ``reference``: always the PyTorch reference.

Nothing here runs at import: Triton is imported only when a call on a device it
could serve asks for it, so a CPU process never imports it.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

__all__ = [
    "BACKEND_ENV",
    "KERNEL_OPS",
    "Backend",
    "TritonUnavailable",
    "choose_backend",
    "interpreting",
    "requested_backend",
    "triton_status",
]

Backend = Literal["triton", "reference"]
BACKEND_ENV = "ATLAS_FAST_BACKEND"
_CHOICES = ("auto", "triton", "reference")

# Public ops that have a Triton kernel in atlas_fast/kernels/ (reported by `python -m atlas_fast.info`).
KERNEL_OPS: tuple[str, ...] = (
    "kldivloss",
    "emdr_loss",
    "pdist_gold_scores",
    "emdr_token_logprobs",
    "fid_cross_attention",  # the no-grad path with passage mass
    "index_topk",  # TorchDocumentIndex on CUDA
)


class TritonUnavailable(RuntimeError):
    """ATLAS_FAST_BACKEND=triton was requested where the Triton kernel cannot run."""


def requested_backend() -> str:
    """The value of ATLAS_FAST_BACKEND, validated; ``auto`` when unset."""
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(f"{BACKEND_ENV} must be one of {', '.join(_CHOICES)}; got {value!r}")
    return value


_UNCHECKED = object()
_triton_error: object = _UNCHECKED


# Cached in a module global, not functools.cache, which torch.compile would warn about and trace through.
def _triton_import_error() -> str | None:
    global _triton_error
    if _triton_error is _UNCHECKED:
        try:
            import triton  # noqa: F401

            _triton_error = None
        except Exception as error:  # a broken install can raise more than ImportError
            _triton_error = f"{type(error).__name__}: {error}"
    return _triton_error


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1: Triton kernels run in its CPU interpreter (launchers pick small blocks)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_status(device: torch.device) -> str | None:
    """None when Triton kernels can run on ``device``, else the reason they cannot."""
    if device.type not in ("cpu", "cuda"):
        return f"Triton kernels do not run on {device.type} tensors"
    if device.type == "cpu" and not interpreting():
        return "Triton runs on CPU tensors only in its interpreter (set TRITON_INTERPRET=1)"
    error = _triton_import_error()
    return None if error is None else f"triton does not import ({error})"


def choose_backend(
    op: str, device: torch.device, unsupported: str | None = None, dtype: torch.dtype | None = None
) -> Backend:
    """Pick the implementation of ``op`` for tensors on ``device``.

    Args:
        op: the op's public name, used in error messages.
        device: where the op's inputs live.
        unsupported: why the kernel cannot take these particular inputs (for
            example a size over its limit), or None when it can.
        dtype: the inputs' floating dtype; every kernel computes in float32, so
            float64 inputs always take the reference.
    """
    requested = requested_backend()
    if requested == "reference":
        return "reference"
    if dtype == torch.float64:
        unsupported = "the Triton kernels compute in float32; float64 inputs use the reference"
    reason = triton_status(device) or unsupported
    if reason is None:
        return "triton"
    if requested == "triton":
        raise TritonUnavailable(f"{op}: {BACKEND_ENV}=triton was requested but {reason}")
    return "reference"
