"""The GPU check: on the GPU machine's own Python, build, test the kernels on CUDA, benchmark the headline shapes.

    python3 benchmarks/gpu_check.py --out DIR            # `make gpu-check`: on a CUDA machine (step caps: 9.5 min)
    python3 benchmarks/gpu_check.py --out DIR --dry-run  # anywhere: every step up to the first that needs CUDA
    python3 benchmarks/gpu_check.py --list               # the benchmark cases it would run

No virtualenv and no downloads: it uses the interpreter it runs under and what that has installed (torch >= 2.11,
triton >= 3.6, pybind11, pytest, pytest-benchmark, hypothesis). In order, each step logged to DIR as it ends, so
that what ran comes back even if a later step fails:
1. the environment: Python, torch, triton, CUDA, the device; optional packages that are missing (faiss) and what
   of the check skips without them (environment.txt);
2. the build: atlas_fast._C with the pybind11 found, the package installed editable with
   `pip install --no-deps --no-build-isolation --no-index` (build.log);
3. the kernel tests on CUDA, `-m "gpu or interpret"` without TRITON_INTERPRET (tests.log), torch.library.opcheck
   of every registered op among them (tests/test_ops.py);
4. the joint training step (benchmarks/gpu_train_step.py, train-step.log and train-step.md): one step per
   gold-score mode under torch.cuda.set_sync_debug_mode("error"), which raises at any host synchronisation, and
   the PDist step compiled with mode="reduce-overhead" (CUDA graphs), timed against eager;
5. the headline benchmarks with pytest-benchmark, side by side in one session (benchmarks.log,
   results-gpu.json): kldivloss at B=64, K=40 (forward and forward+backward) against Atlas's eager expression
   and torch.compile; pdist_gold_scores at B·K=2560, T=16, H=768, V=32128 (time and peak memory) against
   Atlas's materialised logits, torch's chunked F.linear_cross_entropy and cut-cross-entropy's CCE kernel;
   fid_cross_attention with mass at B=4, NH=32, T=32, K ∈ {40, 100}, L=256 against the materialised path and
   SDPA; index_topk at 1M and 4M fp16 rows, 1/64/512 queries, against Atlas's ``q.half() @ E`` then ``topk``;
6. the report: the figures, the device's name and, for each Triton row, the fraction of its roofline bound it
   reached (bound / measured: 1.0 would be the peak), printed, written as DIR/gpu-check.md and into the
   "gpu-check" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The checkout is the package: step 2 installs it editable for the subprocesses, but this process started before.
sys.path.insert(0, str(HERE.parent))

from sections import replace_section  # noqa: E402

from atlas_fast.compile_gate import cases  # noqa: E402
from atlas_fast.compile_gate.driver import TARGETS, Target  # noqa: E402

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
        peers = ("atlas_naive", "triton", "torch_linear_ce", "cut_cross_entropy")
        return parts[:2] == ["2560", "32128"] and provider in peers
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


# Packages the check can run without, and what of it skips when one is missing.
OPTIONAL = {
    "faiss": "the faiss_cpu provider of bench_index_topk (not a headline case) and the faiss interop tests",
    "cut_cross_entropy": "the cut_cross_entropy provider of bench_gold_scores (a headline peer of the gold scores)",
}
# Caps on each step, together under the 10 minutes a lent GPU machine runs one command (never measured on a GPU
# yet): a step that runs over is stopped and reported, and the later ones still run.
BUILD_TIMEOUT_S = 120
TESTS_TIMEOUT_S = 150
TRAIN_STEP_TIMEOUT_S = 120
BENCHMARKS_TIMEOUT_S = 180


class Log:
    """Prints each line and appends it to DIR/gpu-check.log at once, so a later failure loses nothing."""

    def __init__(self, folder: Path):
        self.path = folder / "gpu-check.log"
        self.path.write_text("", encoding="utf-8")

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def _environment(log: Log, out: Path) -> bool:
    """Step 1: versions and the device; returns whether CUDA is usable."""
    import torch
    import triton

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "none (torch.cuda.is_available() is False)"
    lines = [
        f"python {platform.python_version()} ({sys.executable})",
        f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none (a CPU build)'}",
        f"triton {triton.__version__}",
        f"device: {device}",
    ]
    lines += [
        f"missing: {name}: skipped: {what}" for name, what in OPTIONAL.items() if importlib.util.find_spec(name) is None
    ]
    (out / "environment.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for line in lines:
        log(line)
    return cuda


def _step(log: Log, name: str, command: list[str], logfile: Path, timeout_s: float) -> int:
    """Runs one step with its output in ``logfile``; returns its exit status (124 when it ran out of time)."""
    log(f"== {name}: {' '.join(command[:6])}{' ...' if len(command) > 6 else ''} (log: {logfile.name})")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    started = time.perf_counter()
    with logfile.open("w", encoding="utf-8") as handle:
        try:
            status = subprocess.run(
                command, cwd=HERE.parent, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout_s
            ).returncode
        except subprocess.TimeoutExpired:
            status = 124
    tail = logfile.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
    log(f"   exit {status} in {time.perf_counter() - started:.0f} s: {tail[0]}")
    return status


def _build(log: Log, out: Path) -> int:
    """Step 2: atlas_fast._C built with this interpreter's pybind11, the package installed editable, no network."""
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-e", "."]
    status = _step(log, "build and install", install, out / "build.log", BUILD_TIMEOUT_S)
    if status == 0:
        check = [sys.executable, "-c", "import atlas_fast._C, atlas_fast.info as i; print(i.report())"]
        status = _step(log, "native module", check, out / "native.log", 30)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the logs, the JSON results and the report")
    parser.add_argument("--output", type=Path, default=HERE.parent / "BENCHMARKS.md", help="BENCHMARKS.md to update")
    parser.add_argument("--dry-run", action="store_true", help="stop cleanly before the first step that needs CUDA")
    parser.add_argument("--list", action="store_true", help="list the benchmark cases, run nothing")
    args = parser.parse_args()
    if args.list:
        print("\n".join(headline_node_ids()))
        return 0
    if args.out is None:
        parser.error("--out DIR is required: the folder the logs and results are written to")
    args.out.mkdir(parents=True, exist_ok=True)
    log = Log(args.out)
    cuda = _environment(log, args.out)
    status = _build(log, args.out)
    if status:
        log("stop: the build failed (build.log)")
        return status
    if not cuda:
        log("stop: the next step needs a CUDA device; every step before it passed")
        return 0 if args.dry_run else 2
    if args.dry_run:
        log("stop: --dry-run; the next step would run the kernel tests on CUDA")
        return 0
    tests = [sys.executable, "-m", "pytest", "-q", "-ra", "-m", "gpu or interpret", "-p", "no:cacheprovider", "tests"]
    test_status = _step(log, "kernel tests on CUDA", tests, args.out / "tests.log", TESTS_TIMEOUT_S)
    train_step = [sys.executable, str(HERE / "gpu_train_step.py"), "--out", str(args.out)]
    step_status = _step(log, "training step on CUDA", train_step, args.out / "train-step.log", TRAIN_STEP_TIMEOUT_S)
    results = args.out / "results-gpu.json"
    benchmarks = [sys.executable, "-m", "pytest", "-q", f"--benchmark-json={results}", "--benchmark-max-time=0.5",
                  "--benchmark-min-rounds=5", "-p", "no:cacheprovider", *headline_node_ids()]  # fmt: skip
    bench_status = _step(log, "headline benchmarks", benchmarks, args.out / "benchmarks.log", BENCHMARKS_TIMEOUT_S)
    if results.exists():
        report = render(json.loads(results.read_text(encoding="utf-8")))
        train_step_report = args.out / "train-step.md"
        if train_step_report.exists():
            report += "\n\n" + train_step_report.read_text(encoding="utf-8").strip()
        (args.out / "gpu-check.md").write_text(report + "\n", encoding="utf-8")
        replace_section(args.output, "gpu-check", report)
        for line in report.splitlines():
            log(line)
    return test_status or step_status or bench_status or (0 if results.exists() else 1)


if __name__ == "__main__":
    sys.exit(main())
