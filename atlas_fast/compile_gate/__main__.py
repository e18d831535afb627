"""`python -m atlas_fast.compile_gate`: compile every kernel case for sm_80 and sm_90 and check it.

Exit status 1 when a kernel spills, exceeds the shared-memory limit, runs an
fp16/bf16 dot off tensor cores, rounds an fp32 dot, or when a kernel in atlas_fast/kernels/ is
launched by no case. Each architecture compiles in its own process (Triton binds a
kernel's target per process), all of them at once. Needs no GPU, but must run
without TRITON_INTERPRET=1, which replaces the compiler by the interpreter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _one_arch(arch: int, select: str | None, output: Path) -> None:
    from atlas_fast.compile_gate.gate import run_gate

    def progress(rows):
        for row in rows:
            verdict = "FAIL" if row.problems else "ok"
            print(f"sm_{arch} {row.compile_s:6.1f} s {verdict:4} {row.case} {row.kernel}", file=sys.stderr, flush=True)

    rows = run_gate(arch, select, progress)
    output.write_text(json.dumps([dataclasses.asdict(row) for row in rows], indent=1), encoding="utf-8")


def _all_archs(archs: list[int], select: str | None, output: Path) -> list[dict]:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as folder:
        parts = {arch: Path(folder) / f"sm{arch}.json" for arch in archs}
        children = {}
        for arch, part in parts.items():
            command = [sys.executable, "-m", "atlas_fast.compile_gate", "--arch", str(arch), "--one", str(part)]
            if select:
                command += ["--select", select]
            children[arch] = subprocess.Popen(command, env=env)
        failed = [arch for arch, child in children.items() if child.wait() != 0]
        if failed:
            raise SystemExit(f"error: compiling for sm_{failed[0]} failed (its traceback is above)")
        rows = [row for arch in archs for row in json.loads(parts[arch].read_text(encoding="utf-8"))]
    output.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atlas_fast.compile_gate", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", choices=(80, 90), help="repeatable; default 80 and 90")
    parser.add_argument("--select", help="only the cases whose name this regular expression matches")
    parser.add_argument("--json", type=Path, default=Path("compile_gate.json"), help="where the rows are written")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: one architecture, this process
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1" and args.one:
        parser.error("TRITON_INTERPRET=1 replaces the compiler; unset it")
    if args.one:
        _one_arch(args.arch[0], args.select, args.one)
        return 0

    from atlas_fast.compile_gate.coverage import launchable_kernels

    rows = _all_archs(args.arch or [80, 90], args.select, args.json)
    failures = [
        f"sm_{row['arch']} {row['case']} {row['kernel']}: {problem}" for row in rows for problem in row["problems"]
    ]
    if args.select is None:
        covered = {row["kernel"] for row in rows}
        failures += [f"{kernel}: launched by no compile-gate case" for kernel in sorted(launchable_kernels() - covered)]
    print(f"compile gate: {len(rows)} kernels compiled, {len(failures)} problems; rows in {args.json}")
    for failure in failures:
        print(f"  FAIL {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
