"""Log how orthogonal ΔW is, in every mode, so a W&B dashboard compares runs with and without OrthoReg."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from orthoreg_pl.analysis.monitoring import PREFIX, orthogonality_statistics
from orthoreg_pl.modules import FineTuneModule

TOTALS = (f"{PREFIX}/delta_norm", f"{PREFIX}/ortho_penalty")  # logged with LightningModule.log


class OrthogonalityMonitor(L.Callback):
    """Every ``every_n_steps`` optimizer steps, from the current ΔW (whatever the run's own penalty options):

    * ``monitor/ortho_penalty``: the unsquared min-side penalty; ``monitor/delta_norm`` = ‖θ − θ0‖;
    * per layer type (attn_in_proj, attn_out_proj, mlp_c_fc, mlp_c_proj, other):
      ``monitor/<type>/penalty_share`` (its part of the penalty), ``/delta_norm`` (‖ΔW‖ of its
      parameters), ``/angle_dev_mean`` and ``/angle_dev_std`` (|angle − 90°| between column pairs of
      its ΔW, in degrees; about ``max_pairs`` pairs per matrix, the same columns at every step);
    * with a WandbLogger attached and ``histograms``: ``monitor/<type>/angle_dev_hist``, a W&B histogram.

    The totals go through ``LightningModule.log`` (so they are in ``trainer.callback_metrics``); the
    per-type keys go to the loggers directly, in one row per call.

    The penalty terms need one Gram product per matrix, as one penalty evaluation does; the angles
    are sampled, so the whole costs a fraction of a training step (benchmarks/analysis.py)."""

    def __init__(
        self, every_n_steps: int = 50, max_pairs: int = 1024, histograms: bool = True, seed: int = 0
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}; expected >= 1")
        if max_pairs < 1:
            raise ValueError(f"max_pairs={max_pairs}; expected >= 1 (column pairs sampled per matrix)")
        self.every_n_steps = every_n_steps
        self.max_pairs = max_pairs
        self.histograms = histograms
        self.seed = seed
        self._last_step: int | None = None

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        step = trainer.global_step
        if (
            not isinstance(pl_module, FineTuneModule)
            or step == 0  # a micro-batch before the first optimizer step: nothing trained yet
            or step % self.every_n_steps != 0
            or step == self._last_step
        ):
            return  # under gradient accumulation every micro-batch of a step ends here: log once
        self._last_step = step
        with pl_module.full_parameters():  # under FSDP: gathered on every process, as the penalty needs
            metrics, deviations = self.measure(pl_module)
        totals = {k: v for k, v in metrics.items() if k in TOTALS}
        pl_module.log_dict(totals)  # as before: also in trainer.callback_metrics
        if trainer.is_global_zero and trainer.loggers:
            self._log_per_type(trainer, {k: v for k, v in metrics.items() if k not in TOTALS}, deviations)

    def _log_per_type(
        self, trainer: L.Trainer, metrics: dict[str, Tensor], deviations: dict[str, Tensor]
    ) -> None:
        """Straight to the loggers, one row per call, at the step ``self.log`` uses (as Lightning's
        LearningRateMonitor does): ``LightningModule.log`` costs about half a millisecond per key, which
        for ~20 keys every 10 steps would be a few per cent of a quickstart run."""
        row = dict(zip(metrics, torch.stack(list(metrics.values())).tolist())) if metrics else {}
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in trainer.loggers:
            extra = (
                self._histograms(deviations) if self.histograms and isinstance(logger, WandbLogger) else {}
            )
            if row or extra:
                logger.log_metrics({**row, **extra}, step=step)

    @torch.no_grad()
    def measure(self, pl_module: FineTuneModule) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(metrics, |angle − 90°| per layer type) of the module's current ΔW."""
        deltas = pl_module.delta_tensors()
        if all(n in deltas for n in pl_module.penalized_names):  # every mode: each ΔW computed once
            matrices = {n: deltas[n] for n in pl_module.penalized_names}
        else:
            matrices = dict(zip(pl_module.penalized_names, pl_module.penalty_deltas()))
        return orthogonality_statistics(deltas, matrices, self.max_pairs, self.seed)

    @staticmethod
    def _histograms(deviations: dict[str, Tensor]) -> dict:
        """``monitor/<type>/angle_dev_hist``: W&B histograms of |angle − 90°| (degrees)."""
        import wandb

        return {
            f"{PREFIX}/{kind}/angle_dev_hist": wandb.Histogram(values.float().cpu().numpy())
            for kind, values in deviations.items()
        }
