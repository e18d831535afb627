"""Wall-clock seconds per phase of a training step: ``with timer("gold"): ...``."""

from __future__ import annotations

import contextlib
import time

import torch

__all__ = ["PHASES", "PhaseTimer"]

# The phases of one optimiser step, in order (atlas_fast.train.trainer's module docstring).
PHASES = ("retrieve", "reembed", "gold", "reader", "backward", "refresh")


class PhaseTimer:
    """Accumulates the seconds spent inside each ``with timer(phase):`` block since the last `reset`."""

    def __init__(self, phases: tuple[str, ...] = PHASES):
        self.phases = phases
        self.seconds = dict.fromkeys(phases, 0.0)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.phases, 0.0)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        if phase not in self.seconds:
            raise ValueError(f"phase must be one of {', '.join(self.phases)}; got {phase!r}")
        if torch.compiler.is_compiling():  # a compiled region has no phases inside: the caller times it whole
            yield
            return
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started
