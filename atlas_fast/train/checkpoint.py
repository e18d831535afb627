"""Checkpoints: everything needed to resume a run exactly, written atomically, read without pickle.

A checkpoint is a directory: ``state.pt`` (model, optimiser and scheduler state,
RNG states, step; loaded with ``torch.load(weights_only=True)``, so a file from a
stranger cannot run code), the document index (atlas_fast's own sha256-checked
format) and ``config.json``. It is written beside its final name and renamed into
place, so a crash mid-write leaves the previous checkpoint intact; ``latest`` is
a small text file naming the newest one, also replaced atomically.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

__all__ = ["latest_checkpoint", "load_state", "rng_state", "save_checkpoint", "set_rng_state"]

STATE_FILE = "state.pt"
INDEX_FILE = "index"
LATEST = "latest"


def rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors and plain values (weights_only-loadable)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    return {
        "python": [version, list(python_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | os.PathLike, step: int, state: dict, save_index, config: dict) -> Path:
    """Write ``checkpoint-{step}`` under ``output_dir`` atomically; returns its path.

    Args:
        state: tensors, numbers, strings, lists and dicts only.
        save_index: called with the path the index must be written to.
        config: the run's configuration, as JSON.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.save(state, partial / STATE_FILE)
    save_index(partial / INDEX_FILE)
    (partial / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    pointer = output_dir / f".{LATEST}.tmp"
    pointer.write_text(final.name + "\n", encoding="utf-8")
    os.replace(pointer, output_dir / LATEST)
    return final


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``output_dir``, or None."""
    pointer = Path(output_dir) / LATEST
    if not pointer.is_file():
        return None
    path = Path(output_dir) / pointer.read_text(encoding="utf-8").strip()
    return path if (path / STATE_FILE).is_file() else None


def load_state(checkpoint: str | os.PathLike) -> dict:
    """The state dict of a checkpoint directory (no pickle: weights_only=True)."""
    return torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=True)
