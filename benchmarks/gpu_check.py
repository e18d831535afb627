"""The GPU benchmarks at the headline shapes, with each Triton kernel's roofline fraction, into BENCHMARKS.md.

    python benchmarks/gpu_check.py            # on a CUDA machine (`make gpu-check` runs the gpu tests first)
    python benchmarks/gpu_check.py --dry-run  # anywhere: the benchmark cases it would run

Runs, with pytest-benchmark, side by side in one session:
- kldivloss at B=64, K=40 (forward and forward+backward) against Atlas's eager expression and torch.compile;
- pdist_gold_scores at B·K=2560, T=16, V=32128 (time and peak memory) against Atlas's materialised logits;
- fid_cross_attention with mass at B=4, NH=32, T=32, K ∈ {40, 100}, L=256 against the materialised path and SDPA;
- index_topk at 1M and 4M fp16 rows, 1/64/512 queries, against Atlas's ``q.half() @ E`` then ``topk``.
Then writes the figures, the device's name and, for each Triton row, the fraction of its roofline bound it
reached (bound / measured: 1.0 would be the peak), into the "gpu-check" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from sections import replace_section

from atlas_fast.compile_gate import cases
from atlas_fast.compile_gate.driver import TARGETS, Target

HERE = Path(__file__).resolve().parent
FILES = ["bench_losses.py", "bench_gold_scores.py", "bench_attention.py", "bench_index_topk.py"]

# Devices whose peaks differ from their architecture's entry in TARGETS (NVIDIA data sheets, dense).
DEVICE_PEAKS = {
    "H200": Target(90, "H200", 132, 232_448, 4.8e12, 989e12, 67e12),
    "H100": TARGETS[90],
    "A100": TARGETS[80],
}


def _headline(test: str, parts: list[str]) -> bool:
    """Whether the benchmark ``test`` with parameter id ``parts`` is one of the headline cases."""
    provider = parts[-1]
    if test == "test_kldivloss":
        B, K, mode = parts[0], parts[1], parts[2]
        return (B, K) == ("64", "40") and mode != "backward" and provider in ("atlas_eager", "torch_compile", "triton")
    if test == "test_pdist_gold_scores":
        return parts[0] == "2560" and provider in ("atlas_naive", "triton")
    if test == "test_fid_cross_attention":
        B, NH, T, K, L = parts[:5]
        wanted = ("naive_materialised", "sdpa_no_mass", "triton_vnorm")
        return (B, NH, T, L) == ("4", "32", "32", "256") and K in ("40", "100") and provider in wanted
    if test == "test_index_topk":
        return provider in ("atlas_mm_topk", "triton")
    return False


def headline_node_ids() -> list[str]:
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *(str(HERE / name) for name in FILES)],
        capture_output=True, text=True, check=True, cwd=HERE.parent,
    ).stdout  # fmt: skip
    selected = []
    for line in collected.splitlines():
        match = re.fullmatch(r"(\S+)::(\w+)\[(.+)\]", line.strip())
        if match and _headline(match.group(2), match.group(3).split("-")):
            selected.append(f"{match.group(1)}::{match.group(2)}[{match.group(3)}]")
    return selected


def _fields(shape: str) -> dict[str, str]:
    return dict(re.findall(r"([\w·]+)=([\d,]+)", shape))


def kernel_work(op: str, shape: str, mode: str) -> cases.Work | None:
    """What the Triton provider's kernels must do for one benchmark row, summed over its launches."""
    f = {key: int(value.replace(",", "")) for key, value in _fields(shape).items()}
    backward = mode != "forward"
    if op == "kldivloss":
        work = cases.kldivloss_work(f["B"], f["K"], "fp32", False, "mean", grad=True)
        extra = 8 * f["B"] * f["K"] if backward else 0  # the backward scales the stored gradient
    elif op == "pdist_gold_scores":
        work, extra = cases.gold_scores_work(f["B·K"] * f["T"], f["H"], f["V"], "fp32"), 0
    elif op == "fid_cross_attention":
        work = cases.attention_work(f["B"], f["NH"], f["T"], f["K"], f["L"], f["Dh"], "fp32", backward)
        extra = 0
    elif op == "index_topk":
        work, extra = cases.index_topk_work(f["q"], f["N"], f["d"], "fp16"), 0
    else:
        return None
    total = cases.Work(sum(w.bytes for w in work.values()) + extra, sum(w.flops for w in work.values()))
    return cases.Work(total.bytes, total.flops, any(w.tensor_cores for w in work.values()))


def _peaks(device: str) -> Target | None:
    for name, target in DEVICE_PEAKS.items():
        if name in device:
            return target
    return None


def _describe_peaks(peaks: Target | None) -> str:
    if peaks is None:
        return "no known peaks (an unlisted device: no roofline fractions)"
    return (
        f"{peaks.device} peaks ({peaks.hbm_bytes_per_s / 1e12:.2f} TB/s, {peaks.tensor_flops / 1e12:.0f} TFLOP/s "
        f"tensor, {peaks.fp32_flops / 1e12:.0f} TFLOP/s fp32)"
    )


def render(results: dict) -> str:
    from render import format_bytes, format_time

    from atlas_fast.compile_gate.gate import bound_seconds

    benchmarks = results["benchmarks"]
    device = next((b["extra_info"].get("device") for b in benchmarks), "unknown")
    peaks = _peaks(device)
    baseline_time = {}
    for bench in benchmarks:
        info = bench["extra_info"]
        if info["provider"] == info["baseline"]:
            baseline_time[(info["op"], info["shape"], info["mode"])] = bench["stats"]["median"]
    lines = [
        f"## GPU check on {device}",
        "",
        f"`make gpu-check`, {results['datetime']}: median of pytest-benchmark rounds; speed-up over the op's",
        "baseline in the same run; roofline = bound / measured for the Triton rows, the bound from the",
        f"compile gate's work model at {_describe_peaks(peaks)}.",
        "",
        "| op | shape | mode | provider | median | speed-up | peak memory | bound | roofline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for bench in benchmarks:
        info = bench["extra_info"]
        median = bench["stats"]["median"]
        base = baseline_time.get((info["op"], info["shape"], info["mode"]))
        bound = fraction = "—"
        work = kernel_work(info["op"], info["shape"], info["mode"]) if "triton" in info["provider"] else None
        if work is not None and peaks is not None:
            seconds = bound_seconds(work, peaks)
            bound, fraction = format_time(seconds), f"{seconds / median:.3g}"
        lines.append(
            f"| {info['op']} | {info['shape']} | {info['mode']} | {info['provider']} | {format_time(median)} "
            f"| {f'x{base / median:.2f}' if base else '—'} | {format_bytes(info.get('peak_bytes'))} "
            f"| {bound} | {fraction} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=HERE / "results-gpu.json")
    parser.add_argument("--output", type=Path, default=HERE.parent / "BENCHMARKS.md")
    parser.add_argument("--dry-run", action="store_true", help="list the benchmark cases, run nothing")
    args = parser.parse_args()
    node_ids = headline_node_ids()
    if args.dry_run:
        print("\n".join(node_ids))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("error: gpu_check needs a CUDA device (use --dry-run to list its cases)", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "pytest", "-q", f"--benchmark-json={args.json}",
               "--benchmark-max-time=0.5", "--benchmark-min-rounds=5", *node_ids]  # fmt: skip
    status = subprocess.run(command, cwd=HERE.parent).returncode
    if not args.json.exists():
        return status or 1
    replace_section(args.output, "gpu-check", render(json.loads(args.json.read_text(encoding="utf-8"))))
    return status


if __name__ == "__main__":
    sys.exit(main())
