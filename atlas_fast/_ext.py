"""Loads the native module `atlas_fast._C` once and explains a missing build.

The module is compiled from csrc/ by setup.py. Importing atlas_fast never fails
because of it; the first call that needs it raises `ExtensionUnavailable` with
the import error and the command that rebuilds it.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

__all__ = ["ExtensionUnavailable", "SimdUnavailable", "available", "build_info", "native", "required", "simd_paths"]

REBUILD_HINT = (
    "rebuild it from the repository root with `make install` (or `pip install -e .`; it needs a C++17 compiler)"
)


class ExtensionUnavailable(ImportError):
    """atlas_fast._C could not be imported."""


class SimdUnavailable(ValueError):
    """ATLAS_FAST_SIMD forces a path this CPU (or this build) cannot run, or names none."""


@functools.cache
def _load() -> tuple[ModuleType | None, str | None]:
    try:
        from atlas_fast import _C
    except ImportError as error:
        return None, f"{type(error).__name__}: {error}"
    return _C, None


def available() -> bool:
    """True when atlas_fast._C imported."""
    return _load()[0] is not None


def required() -> bool:
    """True when ATLAS_FAST_REQUIRE_EXT=1: a missing extension must fail, not skip (CI sets it)."""
    return os.environ.get("ATLAS_FAST_REQUIRE_EXT", "0") == "1"


def native() -> ModuleType:
    """The imported `atlas_fast._C`.

    Raises:
        ExtensionUnavailable: it is missing; the message says how to rebuild it.
        SimdUnavailable: ATLAS_FAST_SIMD asks for a path that cannot run here (the message names the widest one).
    """
    module, error = _load()
    if module is None:
        raise ExtensionUnavailable(f"atlas_fast._C is not built or failed to load ({error}); {REBUILD_HINT}")
    simd_error = module.simd_error()
    if simd_error:
        raise SimdUnavailable(simd_error)
    return module


def simd_paths() -> dict[str, str] | None:
    """The CPU path that scores each storage dtype ("avx512bf16", "avx512vnni", "avx512", "avx2", "portable");
    None without _C."""
    info = build_info()
    return None if info is None else dict(info["simd_paths"])


def build_info() -> dict[str, object] | None:
    """Compiler, flags and OpenMP threads `_C` was built with; None when it is missing."""
    module, _ = _load()
    return None if module is None else dict(module.build_info())
