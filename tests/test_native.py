"""The native module loads, reports its build, and explains a missing build."""

import pytest

from atlas_fast import _ext


def test_build_info_reports_flags_and_openmp(native):
    info = _ext.build_info()
    assert "-O3" in info["flags"]
    assert info["openmp"] is True
    assert info["max_threads"] >= 1


def test_missing_build_says_how_to_rebuild(monkeypatch):
    monkeypatch.setattr(_ext, "_load", lambda: (None, "ImportError: No module named 'atlas_fast._C'"))
    assert not _ext.available()
    assert _ext.build_info() is None
    with pytest.raises(_ext.ExtensionUnavailable, match=r"No module named.*make install"):
        _ext.native()


def test_require_flag_is_read_from_environment(monkeypatch):
    monkeypatch.setenv("ATLAS_FAST_REQUIRE_EXT", "1")
    assert _ext.required()
    monkeypatch.setenv("ATLAS_FAST_REQUIRE_EXT", "0")
    assert not _ext.required()
