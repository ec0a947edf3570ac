"""The training step of a job, for its sweep's progress line (orthoreg_pl/runs/progress.py): a job of
a multirun reports it every few seconds; a single run draws nothing (Lightning's own bar shows on a
terminal)."""

from __future__ import annotations

import lightning as L

from orthoreg_pl.runs.progress import report_step


class SweepProgress(L.Callback):
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        report_step(int(trainer.global_step), int(total) if total != float("inf") else None)
