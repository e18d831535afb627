"""Argument checks shared by the public ops: each error names the argument and what was expected.

Checks of shapes, dtypes and devices read metadata only and always run. Checks of values (NaN/inf, label
range, empty target rows) read the tensor back to the host: they run in eager mode on CPU, and on CUDA only
in the debug mode ATLAS_FAST_DEBUG=1, since there each is a host synchronisation that also breaks CUDA-graph
capture; under torch.compile they never run (a data-dependent branch breaks the graph).
ATLAS_FAST_CHECK_FINITE=0 turns them off everywhere.
"""

from __future__ import annotations

import math
import os

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "batchmean", "sum", "none")


def float_tensor(name: str, value: object, ndim: int) -> torch.Tensor:
    """``value`` must be a floating tensor of ``ndim`` dimensions."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64; got {value.dtype}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions; got shape {tuple(value.shape)}")
    return value


def shape(name: str, value: torch.Tensor, expected: tuple[int, ...], described: str) -> None:
    """``value.shape`` must equal ``expected``; ``described`` spells it in symbols, e.g. "(B, K)"."""
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {described} = {tuple(expected)}; got {tuple(value.shape)}")


def same_device(**tensors: torch.Tensor | None) -> None:
    """All given tensors must live on one device."""
    present = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(present.values())) > 1:
        listing = ", ".join(f"{name} on {device}" for name, device in present.items())
        raise ValueError(f"tensors must be on one device; got {listing}")


def mask(value: object, expected: tuple[int, ...]) -> torch.Tensor | None:
    """``mask`` must be None or a bool tensor of shape (B, K)."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = real passage); got {getattr(value, 'dtype', value)}")
    shape("mask", value, expected, "(B, K)")
    return value


def labels(value: object, expected: tuple[int, ...]) -> torch.Tensor:
    """``labels`` must be an integer tensor of shape (B, T), -100 marking padding."""
    if not isinstance(value, torch.Tensor) or value.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be an int64 or int32 tensor; got {getattr(value, 'dtype', value)}")
    shape("labels", value, expected, "(B, T)")
    return value


def value_checks(value: torch.Tensor) -> bool:
    """Whether checks that read ``value``'s elements back to the host run (see the module's docstring)."""
    if torch.compiler.is_compiling() or os.environ.get("ATLAS_FAST_CHECK_FINITE", "1") == "0":
        return False
    return value.device.type == "cpu" or os.environ.get("ATLAS_FAST_DEBUG") == "1"


def every_row_has_a_target(labels: torch.Tensor) -> None:
    """Each row of (B, T) labels needs a token that is not -100 (a mean over none is undefined)."""
    if value_checks(labels) and bool(((labels != -100).sum(-1) == 0).any()):
        raise ValueError("labels has a row with no valid target token (all -100); its gold score is undefined")


def temperature(name: str, value: float) -> float:
    """A temperature must be a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


def reduction(value: str) -> str:
    if value not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {value!r}")
    return value


def finite(name: str, value: torch.Tensor, divided_by: tuple[str, float] | None = None) -> None:
    """No NaN or ±inf in ``value`` and, with ``divided_by = (temperature name, τ)``, none in ``value / τ``.

    One reduction (the largest magnitude). Finite scores of 3e38,
    or τ = 1e-45, overflow float32 once divided, where the kernels and the reference divide, and the
    softmax turns NaN: that is said instead. float64 stays float64 in the reference, so only its own
    values are checked. Runs where `value_checks` allows.
    """
    if value.numel() == 0 or not value_checks(value):
        return
    largest = float(value.detach().abs().amax())  # NaN and inf propagate
    if not math.isfinite(largest):
        raise ValueError(f"{name} contains NaN or infinite values; use mask to exclude passages instead")
    if divided_by is None or value.dtype == torch.float64:
        return
    temperature_name, temperature = divided_by
    if largest / temperature > torch.finfo(torch.float32).max:
        raise ValueError(
            f"{name} / {temperature_name} overflows float32 (max |{name}| = {largest:.3g}, {temperature_name} = "
            f"{temperature:.3g}); rescale {name} or raise {temperature_name}"
        )


def constant(name: str, value: torch.Tensor) -> None:
    """Targets are constants in Atlas (computed under no_grad); a grad-requiring one is a caller error."""
    if value.requires_grad:
        raise ValueError(
            f"{name} requires grad, but atlas_fast treats it as a constant target (Atlas computes it "
            f"under torch.no_grad()); pass {name}.detach()"
        )
