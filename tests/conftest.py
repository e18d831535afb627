"""Test setup: fixed seeds, marker-driven skips, and the native-module requirement.

Markers (registered in pyproject.toml, --strict-markers): `gpu` needs CUDA;
`interpret` runs Triton kernels, which on a CPU needs TRITON_INTERPRET=1 (the
Makefile's `test` target sets it); `slow`; `distributed`. CUDA is queried only
when tests are collected, never when test modules are imported.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from atlas_fast import _dispatch, _ext


def pytest_sessionstart(session: pytest.Session) -> None:
    if _ext.required() and not _ext.available():
        try:
            _ext.native()
        except _ext.ExtensionUnavailable as error:
            raise pytest.UsageError(f"ATLAS_FAST_REQUIRE_EXT=1 but {error}") from error


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = torch.cuda.is_available()
    triton_reason = _dispatch.triton_status(torch.device("cuda" if has_cuda else "cpu"))
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "interpret" in item.keywords and triton_reason is not None:
            item.add_marker(pytest.mark.skip(reason=triton_reason))


@pytest.fixture(autouse=True)
def fixed_seed() -> None:
    """Every test starts from the same random state."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def native():
    """The native module; a missing build skips, or fails under ATLAS_FAST_REQUIRE_EXT=1."""
    if not _ext.available() and not _ext.required():
        pytest.skip("atlas_fast._C is not built")
    return _ext.native()
