"""Benchmark setup: library versions go into the JSON's machine_info for BENCHMARKS.md."""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version

import torch

# bench_*.py import the shared harness module that sits beside them.
sys.path.insert(0, os.path.dirname(__file__))


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    versions = {}
    for name in ("atlas_fast", "torch", "triton", "faiss-cpu", "numpy", "liger-kernel"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    machine_info["versions"] = versions
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
