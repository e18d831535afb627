"""What every benchmark shares: one way to time a provider and record its peak memory.

Every benchmark of an op is parametrised by provider (atlas_fast's reference,
Triton kernel or C++ module, and the outside baseline it must beat) so that a
single run yields all of them and BENCHMARKS.md can print ratios. Results are
grouped by `benchmark.group` = "<op> <shape> <mode>"; `extra_info` carries the
provider, the baseline provider of the group and the peak memory in bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from atlas_fast.testing import peak_memory_bytes


def run_provider(
    benchmark,
    fn: Callable[[], object],
    *,
    op: str,
    shape: str,
    mode: str,
    provider: str,
    baseline: str,
    device: torch.device,
) -> object:
    """Time ``fn`` with pytest-benchmark and record provider, baseline and peak memory; returns fn's result."""
    if device.type == "cuda":
        timed = fn

        def fn() -> None:  # kernels are asynchronous: time until they finish
            timed()
            torch.cuda.synchronize()

    benchmark.group = f"{op} {shape} {mode}"
    benchmark.extra_info.update(op=op, shape=shape, mode=mode, provider=provider, baseline=baseline)
    benchmark.extra_info["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    if not benchmark.disabled:
        fn()  # warm-up: compilation and autotuning stay out of the memory figure
        benchmark.extra_info["peak_bytes"] = peak_memory_bytes(fn, device)
    return benchmark(fn)


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` after one untimed: a rate measured beside a benchmark."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
