"""Time spent inside training steps, for benchmarks that ask how much of a job is overhead.

Enabled from the command line (it changes no result, so the run identity ignores it):
``+callbacks.step_timer._target_=orthoreg_pl.callbacks.step_timer.StepTimer +callbacks.step_timer.path=FILE``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class StepTimer(L.Callback):
    """Sums the wall time from each training batch's start to its end (forward, backward, optimizer
    step; data loading excluded) and appends one JSON line per fit to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.step_seconds = 0.0
        self.steps = 0
        self._started: float | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self._started is not None:
            self.step_seconds += time.perf_counter() - self._started
            self.steps += 1
            self._started = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = {"step_seconds": self.step_seconds, "steps": self.steps, "root": trainer.default_root_dir}
            with open(self.path, "a") as f:
                f.write(json.dumps(line) + "\n")
