"""benchmarks/gpu_train_step.py, the GPU check's training-step step, runs end to end on CPU (aot_eager, no CUDA
graphs, no sync debug mode), so that it is known to work before a GPU machine is lent."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train_step.py"


@pytest.mark.slow
def test_training_step_check_runs_on_cpu(tmp_path):
    command = [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--device", "cpu", "--backend", "aot_eager"]
    command += ["--steps", "1", "--modes", "pdist", "emdr", "--compile-modes", "pdist"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "train-step.json").read_text(encoding="utf-8"))
    assert [row["mode"] for row in rows] == ["pdist", "emdr"]
    assert all(row["host_sync"].startswith("not run") and row["eager_median_s"] > 0 for row in rows)
    assert rows[0]["compiled_median_s"] > 0 and "speedup" not in rows[1]
    table = (tmp_path / "train-step.md").read_text(encoding="utf-8")
    assert "| pdist |" in table and "| emdr |" in table and "not compiled" in table
