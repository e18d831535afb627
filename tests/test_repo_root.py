"""Started from the checkout's root, where Python puts the root first on sys.path, nothing of ours shadows an
installed package.

transformers 5.25 imports Hugging Face's `kernels` distribution as soon as its activations load; a top-level
`kernels/` folder of ours was found first and broke every import of transformers from the root
(`python -m pytest`, `python -m atlas_fast.cli`, `torchrun -m atlas_fast.cli`). These tests run those commands
from the root, as a user would.
"""

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from atlas_fast.testing.tiny import set_arguments, tiny_config

REPO = Path(__file__).resolve().parents[1]


def _run_from_root(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "PYTHONPATH"))}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def test_no_entry_of_the_root_is_named_like_an_installed_package():
    """Every top-level import name of every installed distribution (HF's `kernels` among them) is free at the root."""
    distributions = importlib.metadata.packages_distributions()
    installed = {name for name, dists in distributions.items() if "atlas_fast" not in dists}
    shadowing = sorted(
        entry.name for entry in REPO.iterdir() if entry.name.removesuffix(".py") in installed and entry.name[0] != "."
    )
    assert shadowing == [], f"these root entries shadow installed packages when the root is on sys.path: {shadowing}"


def test_transformers_bert_and_t5_import_from_the_root():
    script = (
        "import importlib.util, pathlib\n"
        "from transformers import BertModel, T5ForConditionalGeneration\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print('kernels:', None if spec is None else spec.origin)\n"
    )
    result = _run_from_root([sys.executable, "-c", script])
    _assert_ok(result)
    origin = result.stdout.split("kernels:", 1)[1].strip()
    assert origin == "None" or Path(origin).resolve().parent.parent != REPO, origin  # not a root folder of ours


@pytest.mark.slow
def test_pytest_collects_every_test_from_the_root():
    result = _run_from_root([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"])
    _assert_ok(result)
    assert "error" not in result.stdout.lower().splitlines()[-1], result.stdout[-2000:]
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    modules = {line.split("::")[0] for line in collected}
    assert modules == {f"tests/{path.name}" for path in (REPO / "tests").glob("test_*.py")}, modules


@pytest.mark.slow
def test_cli_train_runs_as_a_module_from_the_root(tmp_path):
    config = tiny_config(tmp_path, steps=2, checkpoint_every=0, freeze_retriever_steps=0, progress=False)
    result = _run_from_root([sys.executable, "-m", "atlas_fast.cli", "train", *set_arguments(config)])
    _assert_ok(result)
    assert "after 2 steps" in result.stdout


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_ranks_train_from_the_root(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed beside the interpreter with torch"
    config = tiny_config(tmp_path, steps=2, checkpoint_every=0, freeze_retriever_steps=0, progress=False)
    command = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "atlas_fast.cli", "train"]
    result = _run_from_root([*command, *set_arguments(config)])
    _assert_ok(result)
    assert "after 2 steps" in result.stdout
