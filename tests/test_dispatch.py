"""Backend choice: per call, from the device and ATLAS_FAST_BACKEND, never at import."""

import subprocess
import sys

import pytest
import torch

from atlas_fast import _dispatch

CPU = torch.device("cpu")


@pytest.fixture
def triton_importable(monkeypatch):
    monkeypatch.setattr(_dispatch, "_triton_import_error", lambda: None)


def test_import_does_not_import_triton_or_native_module():
    code = (
        "import sys, atlas_fast, atlas_fast.losses, atlas_fast.index; "
        "print('triton' in sys.modules, 'atlas_fast._C' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_reference_when_cpu_without_interpreter(monkeypatch, triton_importable):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(_dispatch.BACKEND_ENV, raising=False)
    assert _dispatch.choose_backend("op", CPU) == "reference"


def test_triton_on_cpu_under_interpreter(monkeypatch, triton_importable):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(_dispatch.BACKEND_ENV, "auto")
    assert _dispatch.choose_backend("op", CPU) == "triton"


def test_triton_on_cuda_device(monkeypatch, triton_importable):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert _dispatch.choose_backend("op", torch.device("cuda")) == "triton"


def test_unsupported_inputs_fall_back_in_auto_and_raise_when_forced(monkeypatch, triton_importable):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _dispatch.choose_backend("op", CPU, unsupported="K too large") == "reference"
    monkeypatch.setenv(_dispatch.BACKEND_ENV, "triton")
    with pytest.raises(_dispatch.TritonUnavailable, match=r"op: .*K too large"):
        _dispatch.choose_backend("op", CPU, unsupported="K too large")


def test_forced_triton_that_cannot_run_raises(monkeypatch, triton_importable):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv(_dispatch.BACKEND_ENV, "triton")
    with pytest.raises(_dispatch.TritonUnavailable, match="TRITON_INTERPRET=1"):
        _dispatch.choose_backend("op", CPU)


def test_missing_triton_is_reported(monkeypatch):
    monkeypatch.setattr(_dispatch, "_triton_import_error", lambda: "ImportError: no module named triton")
    assert "does not import" in _dispatch.triton_status(torch.device("cuda"))
    assert _dispatch.choose_backend("op", torch.device("cuda")) == "reference"


def test_forced_reference_wins_everywhere(monkeypatch, triton_importable):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(_dispatch.BACKEND_ENV, "reference")
    assert _dispatch.choose_backend("op", torch.device("cuda")) == "reference"


def test_backend_is_read_per_call(monkeypatch, triton_importable):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(_dispatch.BACKEND_ENV, "reference")
    assert _dispatch.choose_backend("op", CPU) == "reference"
    monkeypatch.setenv(_dispatch.BACKEND_ENV, "auto")
    assert _dispatch.choose_backend("op", CPU) == "triton"


def test_unknown_backend_names_the_variable(monkeypatch):
    monkeypatch.setenv(_dispatch.BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match="ATLAS_FAST_BACKEND must be one of auto, triton, reference"):
        _dispatch.choose_backend("op", CPU)


def test_other_devices_never_get_triton(monkeypatch, triton_importable):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _dispatch.choose_backend("op", torch.device("meta")) == "reference"


def test_float64_inputs_take_the_reference(monkeypatch, triton_importable):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _dispatch.choose_backend("op", CPU, dtype=torch.float64) == "reference"
    assert _dispatch.choose_backend("op", CPU, dtype=torch.float16) == "triton"
    monkeypatch.setenv(_dispatch.BACKEND_ENV, "triton")
    with pytest.raises(_dispatch.TritonUnavailable, match="float64"):
        _dispatch.choose_backend("op", CPU, dtype=torch.float64)
