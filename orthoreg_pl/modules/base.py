"""The shared LightningModule of every fine-tuning mode.

A mode says which parameters train (``select_trainable``) and whether it adds the penalty; this
base keeps θ0 of the trainable parameters on the module's device (non-persistent buffers, moved
with the module, never copied per step), computes ``CE + λ·penalty``, evaluates with torchmetrics,
and exports the task vector θ − θ0.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
from torchmetrics.classification import MulticlassAccuracy

from orthoreg_pl.errors import OrthoRegError, RunFailed
from orthoreg_pl.models.classifier import ImageClassifier
from orthoreg_pl.modules.schedule import warmup_cosine
from orthoreg_pl.penalties.ortho import check_options, ortho_penalty, ortho_penalty_of


class FineTuneModule(L.LightningModule):
    mode: ClassVar[str] = "base"
    uses_penalty: ClassVar[bool] = False
    task_vector_space: ClassVar[str] = "weight"  # "tangent" for linearized modes: never mixed with "weight"
    # Penalty before the forward where it helps (see step_losses); False: after it, as before
    # (benchmarks/modes.py's @late-penalty baseline).
    penalty_before_forward: ClassVar[bool] = True

    def __init__(
        self,
        model: ImageClassifier,
        lr: float = 1e-5,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_steps: int = 500,
        lam: float = 0.0,
        norm: str = "fro",
        gram: str = "min_side",
        sum_accumulated_loss: bool = False,
    ) -> None:
        super().__init__()
        if lam < 0:
            raise OrthoRegError(f"ortho.lam={lam} is negative; the penalty weight λ must be >= 0")
        if lam > 0 and not self.uses_penalty:
            raise OrthoRegError(
                f"mode={self.mode} adds no penalty but ortho.lam={lam}; use mode={self.mode}_ortho or ortho.lam=0"
            )
        check_options(norm, gram)
        betas = tuple(float(b) for b in betas)  # plain floats: checkpoints load with weights_only=True
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.select_trainable()
        self.trainable_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if not self.trainable_names:
            raise OrthoRegError(f"mode={self.mode} selected no trainable parameters")
        self._theta0_buffers = {name: f"theta0_{i}" for i, name in enumerate(self.trainable_names)}
        for name, buffer in self._theta0_buffers.items():
            self.register_buffer(buffer, self.model.get_parameter(name).detach().clone(), persistent=False)
        self._last_penalty: Tensor | None = None
        self._last_finite: tuple[int, Tensor, Tensor | None] | None = None
        self.eval_prefix: str | None = (
            None  # "zeroshot"/"finetuned": logs <prefix>/<stage>_acc instead of <stage>/acc
        )
        self.penalized_names = self.select_penalized()
        num_classes = model.head.weight.shape[0]
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    # ---- what a mode decides ------------------------------------------------------------------------

    def select_trainable(self) -> None:
        """Set ``requires_grad`` on the parameters this mode trains (default: the whole image tower)."""
        self.model.requires_grad_(True)

    def select_penalized(self) -> list[str]:
        """Names of the matrices the penalty covers (default: every trainable 2-D weight)."""
        return [n for n in self.trainable_names if self.model.get_parameter(n).ndim == 2]

    # ---- θ0, ΔW and the penalty ---------------------------------------------------------------------

    def theta0(self, name: str) -> Tensor:
        return getattr(self, self._theta0_buffers[name])

    def weight(self, name: str) -> Tensor:
        """The current value of parameter ``name``: the parameter itself, or under FSDP (inside a forward
        or :meth:`full_parameters`) the whole tensor FSDP puts in its place, with its graph."""
        owner, _, attr = name.rpartition(".")
        return getattr(self.model.get_submodule(owner) if owner else self.model, attr)

    def deltas(self, names: list[str]) -> list[Tensor]:
        return [self.weight(n) - self.theta0(n) for n in names]

    def delta_tensors(self) -> dict[str, Tensor]:
        """The task vector on the module's device: what θ0 must be added to, under image-tower names."""
        return dict(zip(self.trainable_names, self.deltas(self.trainable_names)))

    def penalty_deltas(self) -> list[Tensor]:
        """The matrices ΔW the penalty acts on (``penalized_names``), with their graph."""
        return self.deltas(self.penalized_names)

    def penalty(self) -> Tensor:
        """OrthoReg penalty of the current ΔW, in fp32 even under mixed precision.

        ΔW = W − W0 is formed inside the penalty (and again in its backward) rather than kept, unless
        FSDP holds the weights (its gathered weights do not outlive the forward) or the mode defines
        ΔW otherwise (LoRA: ΔW = B·A)."""
        norm, gram = self.hparams.norm, self.hparams.gram
        with torch.autocast(device_type=self.device.type, enabled=False):
            if self.fsdp_root() is None and type(self).penalty_deltas is FineTuneModule.penalty_deltas:
                weights = [self.weight(n).float() for n in self.penalized_names]
                bases = [self.theta0(n).float() for n in self.penalized_names]
                return ortho_penalty_of(weights, bases, norm=norm, gram=gram)
            deltas = [d.float() for d in self.penalty_deltas()]
            return ortho_penalty(deltas, norm=norm, gram=gram)

    @torch.no_grad()
    def task_vector(self) -> dict[str, Tensor]:
        """The task vector on the CPU, ready for safetensors (under FSDP every process must call it)."""
        with self.full_parameters():
            return {n: d.detach().cpu().contiguous() for n, d in self.delta_tensors().items()}

    # ---- sharded training (FSDP, configs/trainer/fsdp.yaml) -----------------------------------------

    def fsdp_root(self) -> FullyShardedDataParallel | None:
        """The FSDP wrapper the trainer runs this module in, or None (one process, DDP)."""
        model = self._trainer.strategy.model if self._trainer is not None else None
        return model if isinstance(model, FullyShardedDataParallel) else None

    @contextlib.contextmanager
    def full_parameters(self) -> Iterator[None]:
        """Whole parameters for reading, outside a forward: a no-op, or under FSDP a collective gather
        (every process enters it) of read-only copies, dropped on exit."""
        root = self.fsdp_root()
        if root is None:
            yield
            return
        with FullyShardedDataParallel.summon_full_params(root, writeback=False):
            yield

    def on_fit_start(self) -> None:
        root = self.fsdp_root()
        # FULL_SHARD and HYBRID_SHARD free each block's whole parameters after its forward; the penalty,
        # computed in training_step after the forward, needs them until the backward.
        resharded = (ShardingStrategy.FULL_SHARD, ShardingStrategy.HYBRID_SHARD)
        if root is not None and self.uses_penalty and root.sharding_strategy in resharded:
            raise OrthoRegError(
                f"mode={self.mode} reads whole ΔW in every training step, which FSDP with "
                f"sharding_strategy={root.sharding_strategy.name} frees after each block's forward; use "
                "trainer.strategy.sharding_strategy=SHARD_GRAD_OP (configs/trainer/fsdp.yaml)"
            )

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip by the norm of the whole gradient: under FSDP each process holds a shard of it, so the
        norm is FSDP's own (a collective); Lightning's clipping refuses FSDP."""
        root = self.fsdp_root()
        if root is not None and gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            root.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---- Lightning hooks ----------------------------------------------------------------------------

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        # The weights do not change between micro-batches, so the penalty is computed once per
        # optimizer step; Lightning divides each micro-batch loss by `accumulate`, hence the factor.
        penalize = self.uses_penalty and batch_idx % accumulate == 0
        loss_ce, penalty = self.step_losses(images, labels, penalize)
        loss = loss_ce
        if penalty is not None:
            if penalty.requires_grad:
                loss = loss + (self.hparams.lam * accumulate) * penalty
            self._last_penalty = penalty.detach()
            self.log("train/penalty", self._last_penalty)
        total = loss_ce.detach()
        if self._last_penalty is not None:
            total = total + self.hparams.lam * self._last_penalty
        self._check_finite(loss_ce.detach(), total)
        self.log("train/loss", total, prog_bar=True)
        self.log("train/loss_ce", loss_ce.detach())
        return loss * accumulate if self.hparams.sum_accumulated_loss else loss

    def step_losses(self, images: Tensor, labels: Tensor, penalize: bool) -> tuple[Tensor, Tensor | None]:
        """(cross-entropy, penalty or None) of one training step; the penalty has a graph only if λ > 0.

        In a single process the penalty is computed before the forward: autograd runs a backward node
        in reverse order of creation, so the penalty's backward then comes last, once the activations
        are freed, instead of first, which holds a gradient per penalized weight (ViT-B-32: 326 MiB,
        ViT-L-14: 1156 MiB in fp32) through the whole backward pass from its start, the step's memory
        peak. With several processes it comes after the forward, as before: DDP all-reduces a bucket
        once every gradient in it is complete, and a penalty whose backward ran last would hold every
        bucket until the end, losing the overlap of communication with the backward pass; under FSDP
        the whole weights exist only from the forward on."""
        single = self._trainer is None or (self.trainer.world_size == 1 and self.fsdp_root() is None)
        early = penalize and self.penalty_before_forward and single
        penalty = self._step_penalty() if early else None
        loss_ce = F.cross_entropy(self(images), labels)
        if penalize and not early:
            penalty = self._step_penalty()
        return loss_ce, penalty

    def _step_penalty(self) -> Tensor:
        if self.hparams.lam > 0:
            return self.penalty()
        with torch.no_grad():  # λ = 0: logged for comparison, no graph kept
            return self.penalty()

    def _check_finite(self, loss_ce: Tensor, total: Tensor) -> None:
        """Stop at once on a non-finite loss (every process together), naming the step and the likely cause."""
        bad = not bool(torch.isfinite(total))
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        step = self.trainer.global_step if self._trainer is not None else 0
        if not bad:
            self._last_finite = (step, loss_ce, self._last_penalty)
            return
        penalty = self._last_penalty
        if penalty is not None and not bool(torch.isfinite(penalty)):
            cause = f"the penalty diverged: λ={self.hparams.lam:g} or lr={self.hparams.lr:g} too high"
        elif not bool(torch.isfinite(loss_ce)):
            cause = f"the cross-entropy diverged: lr={self.hparams.lr:g} too high (or λ={self.hparams.lam:g})"
        else:
            cause = f"λ·penalty overflowed: λ={self.hparams.lam:g} too high"
        last = "no finite step before it"
        if self._last_finite is not None:
            at, ce, pen = self._last_finite
            last = f"last finite at step {at}: cross-entropy {float(ce):.6g}" + (
                f", penalty {float(pen):.6g}" if pen is not None else ""
            )
        now = f"cross-entropy {float(loss_ce):.6g}" + (
            f", penalty {float(penalty):.6g}" if penalty is not None else ""
        )
        raise RunFailed(f"non-finite loss at step {step} ({now}); {last}; likely cause: {cause}")

    def _eval_step(self, batch: tuple[Tensor, Tensor], metric: MulticlassAccuracy, stage: str) -> None:
        images, labels = batch
        logits = self(images)
        metric.update(logits, labels)
        if self.eval_prefix:  # the one-off evaluations before and after training, under their own keys
            self.log(f"{self.eval_prefix}/{stage}_loss", F.cross_entropy(logits, labels), sync_dist=True)
            self.log(f"{self.eval_prefix}/{stage}_acc", metric)
        else:
            self.log(f"{stage}/loss", F.cross_entropy(logits, labels), sync_dist=True)
            self.log(f"{stage}/acc", metric, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_acc, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_acc, "test")

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=self.hparams.lr,
            betas=tuple(self.hparams.betas),
            eps=self.hparams.eps,
            weight_decay=self.hparams.weight_decay,
        )
        schedule = functools.partial(
            warmup_cosine,
            warmup_steps=self.hparams.warmup_steps,
            total_steps=int(self.trainer.estimated_stepping_batches),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
