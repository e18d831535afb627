"""The joint training step on a GPU: no host synchronisation, and CUDA graphs (torch.compile "reduce-overhead").

    python benchmarks/gpu_train_step.py --out DIR                          # `make gpu-check` runs this (CUDA)
    python benchmarks/gpu_train_step.py --out DIR --device cpu --backend aot_eager --steps 1   # the CPU test

One step = JointModel's forward and backward (re-embedding, reader encoder, gold scores, retriever loss, FiD
reader loss) and the optimizer's step, on the tiny setup (atlas_fast.testing.tiny), for each gold-score mode that
compiles whole (pdist, emdr, adist). Per mode:
1. the step under `torch.cuda.set_sync_debug_mode("error")` after one eager warm-up step: a host
   synchronisation anywhere in it raises, and its message and the frame it came from are recorded;
2. the eager step and, for --compile-modes (pdist by default: compiling costs about a minute a mode), the
   compiled step, timed: the median of --steps after the first, which the compiled column reports separately
   (it includes compilation and CUDA graph recording).

The micro-batch is moved to the device before the step, as a data loader with pinned memory would; the
trainer's per-step logging (a loss read back as a Python float) stays outside, as it is not the step.
Writes DIR/train-step.json and DIR/train-step.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import torch

MODES = ("pdist", "emdr", "adist")


def _trainer(folder: Path, device: str, gold_score_mode: str):
    """The tiny setup's trainer on ``device`` with a dropout-free retriever, its index built."""
    from atlas_fast.testing.tiny import tiny_config, write_tiny_bert
    from atlas_fast.train import Trainer

    model = folder / "bert-no-dropout"
    if not model.is_dir():
        write_tiny_bert(model, dropout=0.0)
    config = tiny_config(
        folder, retriever_path=str(model), progress=False, device=device, gold_score_mode=gold_score_mode,
        output_dir=str(folder / f"run-{gold_score_mode}"),
    )  # fmt: skip
    trainer = Trainer(config)
    trainer.build_index()
    return trainer


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_fn(model, optimizer):
    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        reader_loss, retriever_loss = model(batch, True)
        (reader_loss + retriever_loss).backward()
        optimizer.step()
        return reader_loss.detach()

    return step


def _timed(step, batch, device: torch.device, steps: int) -> tuple[float, float]:
    """(first call, median of ``steps`` later calls) in seconds."""
    times = []
    for _ in range(steps + 1):
        _synchronize(device)
        started = time.perf_counter()
        step(batch)
        _synchronize(device)
        times.append(time.perf_counter() - started)
    return times[0], statistics.median(times[1:])


def _sync_check(step, batch, device: torch.device) -> str:
    """ "none" when the step ran under sync debug mode "error", else the error and where it was raised."""
    if device.type != "cuda":
        return "not run: sync debug mode is CUDA's"
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(batch)
        _synchronize(device)
        return "none"
    except RuntimeError as error:
        frame = traceback.extract_tb(error.__traceback__)[-1]
        return f"{str(error).splitlines()[0]} (at {Path(frame.filename).name}:{frame.lineno} in {frame.name})"
    finally:
        torch.cuda.set_sync_debug_mode(0)


def measure(mode: str, folder: Path, device: str, backend: str, steps: int, compile_step: bool) -> dict:
    trainer = _trainer(folder, device, mode)
    target = trainer.device
    batch = trainer.retrieved_batch(trainer.micro_batch(0))
    batch = dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(target) for f in dataclasses.fields(batch)})
    step = _step_fn(trainer.model, trainer.optimizer)
    step(batch)  # warm-up: lazy initialisation (cuBLAS handles, Triton compilation) stays out of the checks
    row = {"mode": mode, "host_sync": _sync_check(step, batch, target)}
    row["eager_first_s"], row["eager_median_s"] = _timed(step, batch, target, steps)
    if compile_step:
        options = {"mode": "reduce-overhead"} if backend == "inductor" else {}
        compiled = torch.compile(step, backend=backend, **options)
        row["compiled_first_s"], row["compiled_median_s"] = _timed(compiled, batch, target, steps)
        row["speedup"] = row["eager_median_s"] / row["compiled_median_s"]
        torch._dynamo.reset()
    return row


def report(rows: list[dict], device_name: str, backend: str) -> str:
    compiled = 'torch.compile(mode="reduce-overhead")' if backend == "inductor" else f"torch.compile({backend})"
    lines = [
        f"Joint training step on {device_name}, tiny setup; compiled = {compiled} of the whole step.",
        "",
        "| gold scores | host syncs in the step | eager median | compiled median | x eager | compiled first step |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        compiled_cells = (
            f"{row['compiled_median_s'] * 1e3:.1f} ms | x{row['speedup']:.2f} | {row['compiled_first_s']:.1f} s"
            if "speedup" in row
            else "not compiled | — | —"
        )
        lines.append(
            f"| {row['mode']} | {row['host_sync']} | {row['eager_median_s'] * 1e3:.1f} ms | {compiled_cells} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for train-step.json and train-step.md")
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (its test)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend; inductor gets reduce-overhead")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after the first")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="gold-score modes to check")
    parser.add_argument(
        "--compile-modes", nargs="*", default=["pdist"], choices=MODES, help="of those, the ones also compiled"
    )
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        rows = [
            measure(mode, Path(folder), args.device, args.backend, args.steps, mode in args.compile_modes)
            for mode in args.modes
        ]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    text = report(rows, device_name, args.backend)
    (args.out / "train-step.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    (args.out / "train-step.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0 if all(row["host_sync"] in ("none", "not run: sync debug mode is CUDA's") for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
