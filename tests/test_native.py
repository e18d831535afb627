"""The native module loads, reports its build, and explains a missing build."""

import numpy as np
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


def test_core_remove_checks_every_id_before_it_changes_anything(native):
    core = native.DocumentIndex(4, "float32")
    core.upsert(np.arange(10), np.eye(10, 4, dtype=np.float32), 0)
    before = core.ids().copy()
    with pytest.raises(ValueError, match="remove: unknown id 99"):
        core.remove(np.array([1, 2, 99, 3]))  # an absent id after present ones
    with pytest.raises(ValueError, match="distinct"):
        core.remove(np.array([4, 4]))
    np.testing.assert_array_equal(core.ids(), before)  # nothing was removed
    core.remove(np.array([1, 2]))
    assert len(core) == 8


def test_core_lookups_name_the_absent_id(native):
    core = native.DocumentIndex(4, "bfloat16")
    core.upsert(np.arange(3), np.ones((3, 4), np.float32), 5)
    with pytest.raises(ValueError, match="get: unknown id 7"):
        core.get(np.array([0, 7]))
    with pytest.raises(ValueError, match="steps_of: unknown id -3"):
        core.steps_of(np.array([-3]))
    np.testing.assert_array_equal(core.steps_of(np.arange(3)), 5)
