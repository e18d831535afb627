"""Render pytest-benchmark JSON results as BENCHMARKS.md.

    python benchmarks/render.py results.json [more.json ...] --output BENCHMARKS.md --command "make bench"
    python benchmarks/render.py index.json --output BENCHMARKS.md --section cpu-index --command "make bench-index"

The first form rewrites the file (keeping every marked section); the second writes the
results as one marked section, in place, leaving the rest of the file as it is.

One section per results file (its machine, versions and date), one table per op:
a row per (shape, mode), a column per provider holding the median time, the
speed-up over the group's baseline provider (baseline time / provider time, so
> 1 is faster) and the peak memory; where a benchmark records the bytes it must read
and its FLOPs, the achieved GB/s and GFLOP/s, and the CPU ISA path that ran.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from sections import replace_section, sections


def format_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e9:.0f} ns"  # roofline bounds of the smallest GPU cases


def format_bytes(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "-"
    return f"{n_bytes / 2**20:.1f} MiB"


def _machine_line(machine: dict) -> str:
    cpu = machine.get("cpu", {}).get("brand_raw", "unknown CPU")
    cuda = machine.get("cuda_device")
    threads = machine.get("torch_threads")
    versions = ", ".join(f"{name} {v}" for name, v in machine.get("versions", {}).items())
    device = f"GPU {cuda}" if cuda else "no GPU"
    return f"{cpu}, {threads} torch threads, {device}; Python {machine.get('python_version')}; {versions}"


def render_results(results: dict) -> list[str]:
    """Markdown lines for one pytest-benchmark JSON document."""
    tables: dict[str, dict[tuple[str, str], dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    providers: dict[str, list[str]] = defaultdict(list)
    baselines: dict[str, str] = {}
    for bench in results["benchmarks"]:
        info = bench["extra_info"]
        op, provider = info["op"], info["provider"]
        tables[op][(info["shape"], info["mode"])][provider] = {
            "median": bench["stats"]["median"],
            "peak": info.get("peak_bytes"),
            "rates": _rates(info, bench["stats"]["median"]),
        }
        baselines[op] = info["baseline"]
        if provider not in providers[op]:
            providers[op].append(provider)

    lines = [f"Machine: {_machine_line(results['machine_info'])}", f"Date: {results['datetime']}", ""]
    for op in sorted(tables):
        baseline = baselines[op]
        lines += [f"### {op} (speed-up vs `{baseline}`)", ""]
        header = ["shape", "mode", *providers[op]]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for (shape, mode), row in tables[op].items():
            base_time = row.get(baseline, {}).get("median")
            cells = [shape, mode]
            for provider in providers[op]:
                if provider not in row:
                    cells.append("-")
                    continue
                cell = row[provider]
                ratio = f" x{base_time / cell['median']:.2f}" if base_time else ""
                cells.append(f"{format_time(cell['median'])}{ratio}, {format_bytes(cell['peak'])}{cell['rates']}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += _phase_table([b for b in results["benchmarks"] if b["extra_info"]["op"] == op])
    return lines


def _rates(info: dict, seconds: float) -> str:
    """ ", 40.1 GB/s, 30 GFLOP/s, recall@100 0.981, 1,536 B/row, [avx512bf16]" from what a benchmark recorded."""
    parts = []
    if info.get("bytes"):
        parts.append(f"{info['bytes'] / seconds / 1e9:.1f} GB/s")
    if info.get("flops"):
        parts.append(f"{info['flops'] / seconds / 1e9:.0f} GFLOP/s")
    if info.get("recall") is not None:
        parts.append(f"recall@{info['recall_k']} {info['recall']:.3f}")
    if info.get("bytes_per_row"):
        parts.append(f"{info['bytes_per_row']:,} B/row")
    if info.get("isa"):
        parts.append(f"[{info['isa']}]")
    if info.get("limit_seconds"):  # the larger of its bandwidth and GEMM limits, measured beside it
        parts.append(
            f"x{seconds / info['limit_seconds']:.2f} its limit {format_time(info['limit_seconds'])}"
            f" ({info['bandwidth'] / 1e9:.1f} GB/s, GEMM {info['gemm_rate'] / 1e9:.0f} GFLOP/s)"
        )
    return "".join(f", {part}" for part in parts)


def _phase_table(benchmarks: list[dict]) -> list[str]:
    """Mean seconds per phase (extra_info["phase_seconds"]), the slowest in bold; nothing if none are recorded."""
    timed = [b for b in benchmarks if b["extra_info"].get("phase_seconds")]
    if not timed:
        return []
    phases = list(timed[0]["extra_info"]["phase_seconds"])
    lines = ["Time per phase (mean over the rounds):", "", "| shape | provider | " + " | ".join(phases) + " |"]
    lines.append("|" + "---|" * (len(phases) + 2))
    for bench in timed:
        info = bench["extra_info"]
        seconds = info["phase_seconds"]
        slowest = max(seconds, key=seconds.get)
        cells = [f"**{format_time(seconds[p])}**" if p == slowest else format_time(seconds[p]) for p in phases]
        lines.append(f"| {info['shape']} | {info['provider']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="pytest-benchmark --benchmark-json files")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--command", default="make bench", help="the command that produced the results")
    parser.add_argument("--notes", type=Path, help="markdown kept verbatim after the tables (analysis)")
    parser.add_argument("--section", help="write the results as this marked section instead of the whole file")
    args = parser.parse_args()
    if args.section:
        body = [f"Command: `{args.command}`.", ""]
        for path in args.results:
            body += render_results(json.loads(path.read_text()))
        if args.notes:
            body += [args.notes.read_text().rstrip()]
        replace_section(args.output, args.section, "\n".join(body))
        return
    lines = [
        "# atlas_fast benchmarks",
        "",
        "Generated by `benchmarks/render.py` from pytest-benchmark results; do not edit the tables by hand.",
        f"Command: `{args.command}`. Each cell: median time, x speed-up over the op's baseline provider",
        "(> 1 is faster), peak memory allocated by torch during one call (CPU: torch allocations only).",
        "",
    ]
    for path in args.results:
        lines += [f"## {path.name}", "", *render_results(json.loads(path.read_text()))]
    if args.notes:
        lines += [args.notes.read_text().rstrip(), ""]
    # The static GPU report and the GPU check's figures are written by their own scripts: keep them.
    kept = sections(args.output.read_text(encoding="utf-8")) if args.output.exists() else []
    lines += [block + "\n" for block in kept]
    args.output.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
