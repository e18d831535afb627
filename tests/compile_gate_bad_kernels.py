"""Kernels the compile gate must reject, compiled for the target given on the command line (run by a test).

Prints one JSON object: kernel name -> the gate's problems for it.
"""

import json
import sys

import torch
import triton
import triton.language as tl

from atlas_fast.compile_gate.driver import TARGETS, compile_only
from atlas_fast.compile_gate.inspect import inspect, problems


@triton.jit
def _upcast_dot_kernel(a_ptr, out_ptr, N: tl.constexpr):
    """fp16 inputs multiplied as fp32 IEEE: FMA units, not tensor cores."""
    offsets = tl.arange(0, N)[:, None] * N + tl.arange(0, N)[None, :]
    a = tl.load(a_ptr + offsets).to(tl.float32)
    tl.store(out_ptr + offsets, tl.dot(a, a, input_precision="ieee"))


@triton.jit
def _spilling_kernel(a_ptr, out_ptr, N: tl.constexpr):
    """A 64 x 64 fp32 IEEE product held by one warp: far more values than registers."""
    offsets = tl.arange(0, N)[:, None] * N + tl.arange(0, N)[None, :]
    a = tl.load(a_ptr + offsets)
    tl.store(out_ptr + offsets, tl.dot(a, a, input_precision="ieee"))


def main() -> None:
    target = TARGETS[int(sys.argv[1])]
    found = {}
    with compile_only(target) as launches:
        _upcast_dot_kernel[(1,)](torch.empty(32, 32, dtype=torch.float16), torch.empty(32, 32), N=32)
        _spilling_kernel[(1,)](torch.empty(64, 64), torch.empty(64, 64), N=64, num_warps=1)
    for launch, dtype in zip(launches, ("fp16", "fp32"), strict=True):
        found[launch.kernel] = problems(inspect(launch.compiled), dtype, target.max_shared_bytes)
    print(json.dumps(found))


if __name__ == "__main__":
    main()
