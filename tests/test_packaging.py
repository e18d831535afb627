"""A built wheel carries the kernels subpackage and the native module; the CLI reports truthfully."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from atlas_fast import cli, info

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_kernels_and_native_module(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--quiet", "-w", str(tmp_path)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("atlas_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "atlas_fast/kernels/__init__.py" in names
    assert any(name.startswith("atlas_fast/_C") and name.endswith(".so") for name in names)
    assert "atlas_fast/_C.pyi" in names


def test_kernels_package_maps_to_top_level_folder():
    import atlas_fast.kernels

    assert Path(atlas_fast.kernels.__file__).resolve().parent == REPO / "kernels"


def test_info_report_is_truthful(native):
    text = info.report()
    assert "_C: loaded" in text and "openmp=True" in text
    assert "cuda: not available" in text or "cuda device 0" in text


def test_smoke_command_passes(native, capsys):
    assert cli.main(["smoke"]) == 0
    assert "0 failed" in capsys.readouterr().out
