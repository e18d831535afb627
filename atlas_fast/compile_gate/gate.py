"""Compile every case for one CUDA target and check it: the rows of the static GPU report."""

from __future__ import annotations

import dataclasses
import re
import time

from atlas_fast.compile_gate.cases import Case, Work, all_cases
from atlas_fast.compile_gate.driver import TARGETS, Target, compile_only
from atlas_fast.compile_gate.inspect import inspect, problems


@dataclasses.dataclass
class Row:
    """One compiled kernel of one case, for one target: its cost, its roofline bound, what fails."""

    case: str
    dtype: str
    arch: int
    kernel: str
    num_warps: int
    num_stages: int
    registers: int
    stack_bytes: int
    shared_bytes: int
    tensor_core_instructions: int
    dots: str
    bytes: float
    flops: float
    bound_us: float  # max(bytes / peak bandwidth, FLOPs / peak throughput), in microseconds
    compile_s: float
    problems: list[str]


def bound_seconds(work: Work, target: Target) -> float:
    """The roofline time of ``work`` on ``target``: the larger of its memory time and its compute time."""
    throughput = target.tensor_flops if work.tensor_cores else target.fp32_flops
    return max(work.bytes / target.hbm_bytes_per_s, work.flops / throughput)


def _describe_dots(stats) -> str:
    kinds = [f"{dot.operand}{'·mma' if dot.tensor_cores else '·fma'}" for dot in stats.dots]
    return " ".join(kinds) if kinds else "—"


def _failed_row(case: Case, target: Target, launches, message: str) -> Row:
    """The row of a case whose compilation raised: the kernel that was compiling is the next one to launch."""
    compiled = [launch.kernel for launch in launches]
    pending = [kernel for kernel in case.work if kernel not in compiled]
    kernel = pending[0] if pending else "?"
    return Row(case.name, case.dtype, target.arch, kernel, 0, 0, 0, 0, 0, 0, "—", 0.0, 0.0, 0.0, 0.0, [message])


def run_case(case: Case, target: Target) -> list[Row]:
    """Compile ``case`` for ``target``; one row per distinct kernel it launched."""
    started = time.perf_counter()
    with compile_only(target) as launches:
        try:
            case.run()
        except Exception as error:  # a compile error fails the gate with its message, the other cases still run
            message = f"compile error: {type(error).__name__}: {error}".replace("\n", " ")[:2000]
            return [_failed_row(case, target, launches, message)]
    elapsed = time.perf_counter() - started
    rows, seen = [], set()
    for launch in launches:
        if launch.kernel in seen:
            continue
        seen.add(launch.kernel)
        if launch.kernel not in case.work:
            raise KeyError(f"case {case.name!r} launched {launch.kernel}, for which it states no work")
        stats = inspect(launch.compiled)
        work = case.work[launch.kernel]
        rows.append(
            Row(
                case=case.name,
                dtype=case.dtype,
                arch=target.arch,
                kernel=launch.kernel,
                num_warps=stats.num_warps,
                num_stages=stats.num_stages,
                registers=stats.registers,
                stack_bytes=stats.stack_bytes,
                shared_bytes=stats.shared_bytes,
                tensor_core_instructions=stats.tensor_core_instructions,
                dots=_describe_dots(stats),
                bytes=work.bytes,
                flops=work.flops,
                bound_us=bound_seconds(work, target) * 1e6,
                compile_s=elapsed,
                problems=problems(stats, case.dtype, target.max_shared_bytes),
            )
        )
    missing = set(case.work) - seen
    if missing:
        raise KeyError(f"case {case.name!r} states work for kernels it never launched: {sorted(missing)}")
    return rows


def run_gate(arch: int, select: str | None = None, progress=None) -> list[Row]:
    """Every case (or those whose name ``select``, a regular expression, matches) compiled for ``arch``.

    ``progress``, when given, is called with each case's rows as they are compiled.
    """
    target = TARGETS[arch]
    rows = []
    for case in all_cases():
        if select is None or re.search(select, case.name):
            case_rows = run_case(case, target)
            if progress is not None:
                progress(case_rows)
            rows.extend(case_rows)
    return rows
