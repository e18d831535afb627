"""Checkpoints: everything needed to resume a run exactly, written atomically, verified, read without pickle.

A checkpoint is a directory: ``state.pt`` (model, optimiser and scheduler state,
RNG states, step; loaded with ``torch.load(weights_only=True)``, so a file from a
stranger cannot run code), the document index (atlas_fast's own sha256-checked
format), for a sharded run ``model/`` (its model and optimizer tensors as
torch.distributed.checkpoint shards, train/sharded_checkpoint.py, instead of
state.pt's), ``config.json`` and ``manifest.json``, the size and sha256 of every other
file, written last. A checkpoint is only read once the manifest verifies: a
truncated, flipped, missing or extra file gives a CheckpointError naming it.

Nothing is overwritten: each save writes a new directory beside its final name
(``checkpoint-{step}``, or ``checkpoint-{step}.{n}`` when that step was saved
before), renames it into place, then moves ``latest`` (a small text file naming
the newest, replaced atomically) and only then prunes the checkpoint it
supersedes. A crash at any moment leaves ``latest`` naming a complete checkpoint;
when ``latest`` is missing, unreadable, names something outside the output
directory or a checkpoint that does not verify, the newest checkpoint that does
verify is used instead. A checkpoint skipped that way is named on stderr and, when it is
newer than the one resumed from, moved aside (``checkpoint-6.corrupt``) so that no later save
prunes it or takes its name: a damaged file is kept for the user to inspect, never deleted.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from atlas_fast._hashing import file_sha256

__all__ = [
    "CheckpointError",
    "checkpoints",
    "latest_checkpoint",
    "load_state",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "verify_checkpoint",
]

STATE_FILE = "state.pt"
INDEX_FILE = "index"
MANIFEST = "manifest.json"
LATEST = "latest"
MODEL_DIR = "model"  # a sharded run's model and optimizer tensors (train/sharded_checkpoint.py)
STATE_KEYS = ("step", "optimizer", "scheduler", "rng", "documents_embedded")
MODEL_KEYS = ("retriever", "reader")  # in state.pt unless the checkpoint has MODEL_DIR
_NAME = re.compile(r"checkpoint-(\d+)(?:\.(\d+))?")


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: missing, truncated, corrupted, incomplete or foreign."""


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


def _payload(directory: Path) -> dict[str, Path]:
    """Every file of a checkpoint but its manifest, by path relative to the directory."""
    return {
        path.relative_to(directory).as_posix(): path
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def _write_manifest(directory: Path) -> None:
    files = {}
    for name, path in _payload(directory).items():
        with open(path, "rb") as file:
            os.fsync(file.fileno())  # the data is on disk before the manifest vouches for it
        files[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    (directory / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1) + "\n", encoding="utf-8")


def verify_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """Check every file of ``checkpoint`` against its manifest; returns the path, raises CheckpointError."""
    directory = Path(checkpoint)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory (it does not exist or is a file)")
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        expected = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in manifest["files"].items()}
    except FileNotFoundError as error:
        raise CheckpointError(f"{manifest_path}: missing (not an atlas_fast checkpoint, or incomplete)") from error
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({type(error).__name__}: {error})") from error
    present = _payload(directory)
    extra = sorted(set(present) - set(expected))
    if extra:
        raise CheckpointError(f"{directory / extra[0]}: not listed in the manifest (the checkpoint was altered)")
    for name, (size, sha256) in expected.items():
        path = directory / name
        if name not in present:
            raise CheckpointError(f"{path}: missing")
        if path.stat().st_size != size:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, the manifest says {size} (truncated?)")
        if file_sha256(path) != sha256:
            raise CheckpointError(f"{path}: checksum mismatch (the file is corrupted)")
    return directory


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint directories under ``output_dir``, oldest first (by step, then by save)."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = _NAME.fullmatch(path.name)
        if match and path.is_dir():
            found.append(((int(match.group(1)), int(match.group(2) or 0)), path))
    return [path for _, path in sorted(found)]


def _fresh_name(output_dir: Path, step: int) -> str:
    name, again = f"checkpoint-{step}", 0
    while (output_dir / name).exists():
        again += 1
        name = f"checkpoint-{step}.{again}"
    return name


def save_checkpoint(
    output_dir: str | os.PathLike, step: int, state: dict, writers: dict[str, Callable[[Path], object]], config: dict
) -> Path:
    """Write a new checkpoint of ``step`` under ``output_dir``; returns its path. Never overwrites one.

    Args:
        state: tensors, numbers, strings, lists and dicts only.
        writers: by name inside the checkpoint (INDEX_FILE, MODEL_DIR), what writes it, called with its path.
        config: the run's configuration, as JSON.
    """
    output_dir = Path(output_dir)
    final = output_dir / _fresh_name(output_dir, step)
    partial = output_dir / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        torch.save(state, partial / STATE_FILE)
        for name, write in writers.items():
            write(partial / name)
        (partial / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        _write_manifest(partial)
        os.replace(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # a failed save (disk full, ...) leaves no debris
    pointer = output_dir / f".{LATEST}.tmp"
    pointer.write_text(final.name + "\n", encoding="utf-8")
    os.replace(pointer, output_dir / LATEST)
    for older in checkpoints(output_dir):  # what this save supersedes: earlier saves of the same step
        if older != final and _NAME.fullmatch(older.name).group(1) == str(step) and _verifies(older):
            shutil.rmtree(older)  # one that does not verify is kept: it is evidence, and this run did not write it
    return final


def _verifies(path: Path) -> bool:
    try:
        verify_checkpoint(path)
    except CheckpointError:
        return False
    return True


def _named_by_latest(output_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, if it is readable and names a checkpoint directory of output_dir."""
    try:
        name = (output_dir / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return output_dir / name if _NAME.fullmatch(name) else None  # no separators, no "..": stays inside


def latest_checkpoint(output_dir: str | os.PathLike, set_aside: bool = False) -> Path | None:
    """The newest checkpoint under ``output_dir`` that verifies; None when there is no checkpoint at all.

    ``latest`` is tried first, then every checkpoint from the newest down.

    Args:
        set_aside: say on stderr which checkpoints were skipped and why, and rename each one newer than the
            checkpoint returned to ``NAME.corrupt`` (``NAME.corrupt.N`` when taken), out of reach of later
            saves and their pruning. One process of a run does this (rank 0).

    Raises:
        CheckpointError: there are checkpoints, but none verifies (each one's reason is given).
    """
    output_dir = Path(output_dir)
    candidates = checkpoints(output_dir)[::-1]
    named = _named_by_latest(output_dir)
    if named is not None:
        candidates = [named] + [path for path in candidates if path != named]
    skipped = []
    for path in candidates:
        try:
            found = verify_checkpoint(path)
        except CheckpointError as error:
            skipped.append((path, str(error)))
            continue
        if set_aside:
            for damaged, reason in skipped:
                _set_aside(damaged, reason, newer=_order(damaged) > _order(found))
        return found
    if skipped:
        raise CheckpointError(f"{output_dir}: no checkpoint verifies: " + "; ".join(reason for _, reason in skipped))
    return None


def _order(path: Path) -> tuple[int, int]:
    match = _NAME.fullmatch(path.name)
    return int(match.group(1)), int(match.group(2) or 0)


def _set_aside(path: Path, reason: str, newer: bool) -> None:
    """Report a checkpoint a resume skipped; move it out of the run's way when it is ``newer`` than the resumed."""
    if not newer or not path.is_dir():  # an older one is in nobody's way; a missing one has nothing to keep
        print(f"skipped checkpoint {path.name}: {reason}", file=sys.stderr)
        return
    aside, again = path.with_name(f"{path.name}.corrupt"), 0
    while aside.exists():
        again += 1
        aside = path.with_name(f"{path.name}.corrupt.{again}")
    os.replace(path, aside)
    print(f"skipped checkpoint {path.name}: {reason}; moved aside to {aside.name}", file=sys.stderr)


def load_state(checkpoint: str | os.PathLike, verified: bool = False) -> dict:
    """The state dict of a verified checkpoint directory (no pickle: weights_only=True).

    Args:
        verified: the caller has just checked the directory (`verify_checkpoint`, `latest_checkpoint`),
            so its files are not hashed a second time.

    Raises:
        CheckpointError: the checkpoint does not verify, its state does not load, or a key is missing.
    """
    path = (Path(checkpoint) if verified else verify_checkpoint(checkpoint)) / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a bad file; all mean "not a state file"
        raise CheckpointError(f"{path}: does not load ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dictionary")
    required = STATE_KEYS if (path.parent / MODEL_DIR).is_dir() else STATE_KEYS + MODEL_KEYS
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"{path}: missing {', '.join(missing)}")
    return state
