"""What a kernel compiled for a CUDA target costs: registers, stack (spills), shared memory, tensor-core use.

Everything is read from the compiled artefacts, so a kernel loaded from Triton's
cache reports the same as a fresh compile: registers and stack frame from the cubin
(`cuobjdump -res-usage`, the triton wheel's own), tensor-core instructions from its
SASS (HMMA on sm_80, HGMMA for sm_90's wgmma), and each dot product's operand type,
precision and layout from the TTGIR, where a dot that Triton put on tensor cores
has an `nvidia_mma` result layout and one left on FMA units a blocked layout.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tempfile
from pathlib import Path

from triton import knobs

_RESOURCE = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)")
_LAYOUT_ALIAS = re.compile(r"^(#\w+) = (.*)$", re.MULTILINE)
_DOT = re.compile(r"= (tt\.dot|ttng\.warp_group_dot) (.*)$", re.MULTILINE)
_ELEMENT = re.compile(r"<\d+x\d+x(\w+),")
_RESULT_LAYOUT = re.compile(r"-> tensor<[\dx]+\w+, (#\w+)>")
_PRECISION = re.compile(r"inputPrecision = (\w+)")
_TENSOR_CORE_SASS = re.compile(r"\b(HMMA|HGMMA)\b")


@dataclasses.dataclass(frozen=True)
class Dot:
    """One dot product of a kernel as compiled."""

    operand: str  # MLIR element type: f16, bf16, f32, ...
    precision: str  # ieee, tf32, ... (what Triton was asked for fp32 operands)
    tensor_cores: bool


@dataclasses.dataclass(frozen=True)
class KernelStats:
    kernel: str
    num_warps: int
    num_stages: int
    registers: int
    stack_bytes: int  # ptxas's stack frame: spills (and any local memory) live there
    local_bytes: int
    shared_bytes: int  # dynamic shared memory Triton launches the kernel with
    tensor_core_instructions: int  # HMMA/HGMMA in the SASS
    dots: tuple[Dot, ...]


def _cuobjdump(args: list[str], cubin: bytes) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run(
            [knobs.nvidia.cuobjdump.path, *args, str(path)], check=True, capture_output=True, text=True
        ).stdout


def dots_of(ttgir: str) -> tuple[Dot, ...]:
    """The dot products of a TTGIR module, in source order."""
    layouts = dict(_LAYOUT_ALIAS.findall(ttgir))
    dots = []
    for _, rest in _DOT.findall(ttgir):
        operand = _ELEMENT.search(rest)
        result = _RESULT_LAYOUT.search(rest)
        precision = _PRECISION.search(rest)
        if operand is None or result is None:
            raise ValueError(f"cannot read the dot product {rest!r} of the TTGIR")
        dots.append(
            Dot(
                operand=operand.group(1),
                precision=precision.group(1) if precision else "ieee",
                tensor_cores="nvidia_mma" in layouts.get(result.group(1), ""),
            )
        )
    return tuple(dots)


def inspect(compiled) -> KernelStats:
    """The statistics of one Triton CompiledKernel (fresh or from the cache)."""
    cubin = compiled.asm["cubin"]
    name = compiled.metadata.name
    resources = {match[0]: match[1:] for match in _RESOURCE.findall(_cuobjdump(["-res-usage"], cubin))}
    if name not in resources:
        raise ValueError(f"cuobjdump reported no resource usage for {name}")
    registers, stack, local = (int(value) for value in resources[name])
    sass = _cuobjdump(["-sass"], cubin)
    return KernelStats(
        kernel=name,
        num_warps=compiled.metadata.num_warps,
        num_stages=compiled.metadata.num_stages,
        registers=registers,
        stack_bytes=stack,
        local_bytes=local,
        shared_bytes=compiled.metadata.shared,
        tensor_core_instructions=len(_TENSOR_CORE_SASS.findall(sass)),
        dots=dots_of(compiled.asm["ttgir"]),
    )


def problems(stats: KernelStats, dtype: str, max_shared_bytes: int) -> list[str]:
    """What keeps the kernel from running well on the target; empty when it passes the gate.

    ``dtype`` is the case's data type: fp16/bf16 cases must run every dot on tensor cores
    with half operands; fp32 cases must use IEEE fp32 dots (the project's exactness rule).
    """
    found = []
    if stats.stack_bytes or stats.local_bytes:
        found.append(f"spills: {stats.stack_bytes} B stack frame, {stats.local_bytes} B local memory")
    if stats.shared_bytes > max_shared_bytes:
        found.append(f"shared memory {stats.shared_bytes} B over the {max_shared_bytes} B per-block limit")
    for index, dot in enumerate(stats.dots):
        if dtype in ("fp16", "bf16"):
            if dot.operand not in ("f16", "bf16"):
                found.append(f"dot {index} takes {dot.operand} operands in a {dtype} kernel (not on tensor cores)")
            elif not dot.tensor_cores:
                found.append(f"dot {index} ({dot.operand}) is not on tensor cores")
        elif dot.operand == "f32" and dot.precision != "ieee":
            found.append(f"dot {index} rounds fp32 operands ({dot.precision}); fp32 kernels use IEEE dots")
    if dtype in ("fp16", "bf16") and stats.dots and stats.tensor_core_instructions == 0:
        found.append("no HMMA/HGMMA instruction in the SASS")
    return found
