"""Compile Triton kernels for a CUDA target on a machine without a GPU.

`compile_only(target)` swaps Triton's active driver for a stub that reports a CUDA
target (and that target's device properties), and turns every launch of a
`triton.JITFunction` into Triton's own compile-only warmup. The project's real host
launchers then run unchanged on CPU tensors of the target shapes: block sizes,
num_warps/num_stages and argument specialisation (divisibility by 16, ints equal
to 1) are exactly what a launch on that GPU would get, and Triton's cache applies
as usual (its key covers the source, the target and the options). The launchers'
outputs are garbage, since nothing runs; only the compiled kernels are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime import driver as triton_driver
from triton.runtime.jit import JITFunction


@dataclasses.dataclass(frozen=True)
class Target:
    """A CUDA architecture and the device the static report holds its kernels to."""

    arch: int  # compute capability as Triton spells it: 80, 90
    device: str
    multiprocessor_count: int
    max_shared_bytes: int  # opt-in dynamic shared memory per block
    hbm_bytes_per_s: float
    tensor_flops: float  # dense fp16/bf16 tensor-core peak
    fp32_flops: float  # fp32 FMA peak (IEEE fp32 dots)


# Peaks from NVIDIA's data sheets (dense, no sparsity).
TARGETS = {
    80: Target(80, "A100 SXM4 80GB", 108, 166_912, 2.039e12, 312e12, 19.5e12),
    90: Target(90, "H100 SXM5", 132, 232_448, 3.35e12, 989e12, 67e12),
}


@dataclasses.dataclass
class Launch:
    """One compile-only launch: the kernel's name and Triton's CompiledKernel."""

    kernel: str
    compiled: object


class _DeviceUtils:
    def __init__(self, target: Target):
        self._target = target

    def get_device_properties(self, device):
        return {
            "multiprocessor_count": self._target.multiprocessor_count,
            "max_shared_mem": self._target.max_shared_bytes,
            "max_num_regs": 65536,
            "warpSize": 32,
        }


class CompileOnlyDriver(DriverBase):
    """A Triton driver that only knows its target: enough to compile, nothing to launch."""

    def __init__(self, target: Target):
        self.target = target
        self.utils = _DeviceUtils(target)

    @classmethod
    def is_active(cls):
        return False  # never chosen by Triton's own driver discovery

    def get_current_target(self):
        return GPUTarget("cuda", self.target.arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def _cannot(self, *args, **kwargs):
        raise RuntimeError("the compile-only driver compiles kernels; it cannot run or benchmark them")

    map_python_to_cpp_type = get_benchmarker = get_device_interface = _cannot
    get_empty_cache_for_benchmark = clear_cache = _cannot


@contextlib.contextmanager
def compile_only(target: Target) -> Iterator[list[Launch]]:
    """Within the block, kernel launches compile for ``target`` and are recorded, in order, in the yielded list."""
    launches: list[Launch] = []
    original_run = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        compiled = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        launches.append(Launch(self.fn.__name__, compiled))
        return compiled

    # reset_active() would create the default driver, which fails where there is no GPU: restore the field.
    previous = triton_driver._active
    triton_driver.set_active(CompileOnlyDriver(target))
    JITFunction.run = run
    try:
        yield launches
    finally:
        JITFunction.run = original_run
        triton_driver._active = previous
