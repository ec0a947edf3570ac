"""Log how orthogonal ΔW is, in every mode, so a W&B dashboard compares runs with and without OrthoReg."""

from __future__ import annotations

import lightning as L
import torch

from orthoreg_pl.modules import FineTuneModule
from orthoreg_pl.penalties import ortho_penalty


class OrthogonalityMonitor(L.Callback):
    """Every ``every_n_steps`` optimizer steps: the penalty of the current ΔW (unsquared, min-side
    Gram, whatever the run's own options) as ``monitor/ortho_penalty``, and ``monitor/delta_norm`` = ‖θ − θ0‖."""

    def __init__(self, every_n_steps: int = 50) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}; expected >= 1")
        self.every_n_steps = every_n_steps

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        if not isinstance(pl_module, FineTuneModule) or trainer.global_step % self.every_n_steps != 0:
            return
        with pl_module.full_parameters():  # under FSDP: gathered on every process, as the penalty needs
            deltas = [d.float() for d in pl_module.delta_tensors().values()]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(d) for d in deltas]))
            matrices = [d.float() for d in pl_module.penalty_deltas()]
            penalty = ortho_penalty(matrices, norm="fro", gram="min_side") if matrices else None
        pl_module.log("monitor/delta_norm", norm)
        if penalty is not None:
            pl_module.log("monitor/ortho_penalty", penalty)
