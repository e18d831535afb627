"""A built wheel carries the kernels subpackage and the native module; the CLI reports truthfully."""

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from atlas_fast import cli, info
from atlas_fast.testing.tiny import set_arguments, tiny_config

REPO = Path(__file__).resolve().parents[1]


SUBPACKAGES = [
    "atlas_fast",
    "atlas_fast.kernels",
    "atlas_fast.reference",
    "atlas_fast.index",
    "atlas_fast.models",
    "atlas_fast.data",
    "atlas_fast.train",
    "atlas_fast.compile_gate",
]


@pytest.mark.slow
def test_sdist_and_wheel_install_and_run_outside_the_checkout(tmp_path):
    """What a user of `pip install .` gets: every subpackage, the native module, a working CLI."""
    dist = tmp_path / "dist"
    # The wheel is built from the sdist (build's default), so a file the sdist lacks breaks the wheel build.
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], check=True, capture_output=True)
    (sdist,) = dist.glob("atlas_fast-*.tar.gz")
    with tarfile.open(sdist) as archive:
        sdist_names = archive.getnames()
    assert any(name.endswith("csrc/document_index.h") for name in sdist_names)  # the headers the build needs
    assert any(name.endswith("atlas_fast/kernels/index_topk.py") for name in sdist_names)
    (wheel,) = dist.glob("atlas_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in SUBPACKAGES:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    assert any(name.startswith("atlas_fast/_C") and name.endswith(".so") for name in names)
    assert "atlas_fast/_C.pyi" in names

    # A fresh venv outside the checkout. Its dependencies (torch, transformers, the packaged MiniLM...) come
    # from this environment's site-packages by a path entry, which runs no .pth file, so this checkout's
    # editable install stays out: atlas_fast can only come from the wheel.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    outer = [path for path in sys.path if path.endswith("site-packages")]
    Path(site, "outer.pth").write_text("\n".join(outer) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site, str(wheel)],
                   check=True)  # fmt: skip
    run = dict(
        cwd=tmp_path, check=True, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    )
    imported = subprocess.run(
        [str(python), "-c", f"import importlib; [importlib.import_module(p) for p in {SUBPACKAGES!r}]; "
         "import atlas_fast; print(atlas_fast.__file__)"], **run,
    ).stdout  # fmt: skip
    assert imported.startswith(site)
    cli_entry = [str(python), "-c", "import sys; from atlas_fast.cli import main; sys.exit(main(sys.argv[1:]))"]
    assert "0 failed" in subprocess.run([*cli_entry, "smoke"], **run).stdout
    config = tiny_config(tmp_path / "tiny", steps=2, checkpoint_every=0, freeze_retriever_steps=0, progress=False)
    trained = subprocess.run([*cli_entry, "train", *set_arguments(config)], **run).stdout
    assert "after 2 steps" in trained


def test_info_report_is_truthful(native):
    text = info.report()
    assert "_C: loaded" in text and "openmp=True" in text
    assert "cuda: not available" in text or "cuda device 0" in text


def test_smoke_command_passes(native, capsys):
    assert cli.main(["smoke"]) == 0
    assert "0 failed" in capsys.readouterr().out
