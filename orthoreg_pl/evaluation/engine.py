"""The evaluation engine of the merge pipeline: build once, write weights in place, score every α.

The encoder is built once; each task's zero-shot head and data loaders are built once. One
``Trainer.validate`` pass per (task, split) scores the whole α grid: for every batch the merged
weights θ0 + α·τ are written in place into the encoder (``torch._foreach`` copies, no rebuild) and
the batch is classified once per α, so the data are read once. Linearized (tangent) vectors use the
closed form: f_lin(θ0 + α·τ; x) = f(θ0; x) + α·J f(θ0; x)·τ, one JVP per batch for the whole grid.
Evaluation runs on the Trainer's strategy (``trainer=ddp`` shards the data without padding), and
accuracy is summed as exact counts across processes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import lightning as L
import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp
from torch.utils.data import DataLoader

from orthoreg_pl.evaluation.metrics import AlphaAccuracy, accuracies
from orthoreg_pl.models.classifier import ImageClassifier
from orthoreg_pl.models.heads import ZeroShotHead
from orthoreg_pl.models.linearized import linearized_forward, math_attention

_VISUAL = "visual."
# The logged counts are already summed over processes: Lightning's advice to sync them again is moot.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('count/")


class MergeEvalModule(L.LightningModule):
    """Evaluates ``θ0 + α·τ`` for a grid of α on one task; θ0 stays on the device as buffers."""

    def __init__(self, model: ImageClassifier) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        self.param_names = [n for n, _ in model.named_parameters()]
        self._theta0_buffers = {name: f"theta0_{i}" for i, name in enumerate(self.param_names)}
        for name, buffer in self._theta0_buffers.items():
            self.register_buffer(buffer, model.get_parameter(name).detach().clone(), persistent=False)
        self.keys: list[str] = []
        self._targets: list[nn.Parameter] = []
        self.alphas: list[float] = [0.0]
        self.closed_form = False
        self.metric = AlphaAccuracy(1)
        self.result: Tensor | None = None

    def theta0(self, name: str) -> Tensor:
        return getattr(self, self._theta0_buffers[name])

    def configure(
        self, head: Tensor, direction: Mapping[str, Tensor] | None, alphas: Sequence[float], closed_form: bool
    ) -> None:
        """Set the task head, the direction τ (None: θ0 alone) and the α grid for the next pass."""
        self.model.head = ZeroShotHead(head)
        direction = dict(direction or {})
        unknown = sorted(set(direction) - set(self.param_names))
        if unknown:
            raise KeyError(f"task vector keys not in the encoder: {unknown[:5]}")
        for i in range(len(self.keys)):  # drop the previous direction
            delattr(self, f"direction_{i}")
        self.keys = sorted(direction)
        self._targets = [self.model.get_parameter(k) for k in self.keys]  # stable across .to(device)
        for i, key in enumerate(self.keys):
            self.register_buffer(f"direction_{i}", direction[key].detach().clone(), persistent=False)
        self.alphas = [float(a) for a in alphas] if direction else [0.0]
        self.closed_form = closed_form
        self.metric = AlphaAccuracy(len(self.alphas))
        self.result = None

    def _direction(self) -> list[Tensor]:
        return [getattr(self, f"direction_{i}") for i in range(len(self.keys))]

    @torch.no_grad()
    def write_weights(self, alpha: float) -> None:
        """θ ← θ0 + α·τ in place, for the keys of τ."""
        if not self.keys:
            return
        torch._foreach_copy_(self._targets, [self.theta0(k) for k in self.keys])
        torch._foreach_add_(self._targets, self._direction(), alpha=alpha)

    def _tangent_logits(self, images: Tensor) -> Tensor:
        """[A, B, C] logits of the linearized encoder at every α from one JVP."""
        visual = self.model.visual
        primals = {n[len(_VISUAL) :]: self.theta0(n) for n in self.param_names if n.startswith(_VISUAL)}
        tangents = {k: torch.zeros_like(v) for k, v in primals.items()}
        for key, tau in zip(self.keys, self._direction()):
            tangents[key[len(_VISUAL) :]] = tau
        with math_attention():
            features, directional = jvp(
                lambda p: functional_call(visual, p, (images,)), (primals,), (tangents,)
            )
        alphas = torch.tensor(self.alphas, dtype=features.dtype, device=features.device).view(-1, 1, 1)
        return self.model.head(features.unsqueeze(0) + alphas * directional.unsqueeze(0))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        if self.closed_form:
            logits = self._tangent_logits(images)
        else:
            logits = []
            for alpha in self.alphas:
                self.write_weights(alpha)
                logits.append(self.model(images))
            logits = torch.stack(logits)
        self.metric.update(logits, labels)

    def on_validation_epoch_end(self) -> None:
        self.result = self.metric.compute()  # counts, already summed over processes
        self.write_weights(0.0)  # leave θ0 in place
        if self.trainer.world_size > 1:  # logged so that they also come back from spawned processes
            for i, count in enumerate(self.result):
                self.log(
                    f"count/{i}", count.float(), sync_dist=False
                )  # integers: exact in float32 below 2**24


class TangentDirectModule(MergeEvalModule):
    """Direct evaluation of linearized vectors (weights θ0 + α·τ, then the linearized forward): the
    yardstick the closed form is tested and benchmarked against."""

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        theta0 = {n[len(_VISUAL) :]: self.theta0(n) for n in self.param_names if n.startswith(_VISUAL)}
        logits = []
        for alpha in self.alphas:
            self.write_weights(alpha)
            logits.append(self.model.head(linearized_forward(self.model.visual, theta0, images)))
        self.metric.update(torch.stack(logits), labels)


def evaluate_alphas(
    trainer: L.Trainer,
    module: MergeEvalModule,
    loader: DataLoader,
    head: Tensor,
    direction: Mapping[str, Tensor] | None,
    alphas: Sequence[float],
    closed_form: bool = False,
) -> list[float]:
    """Top-1 accuracy on ``loader`` of θ0 + α·τ for every α (one pass over the data)."""
    module.configure(head, direction, alphas, closed_form)
    logged = trainer.validate(module, dataloaders=loader, verbose=False)[0]
    if module.result is not None:  # counted in this process
        counts = module.result.tolist()
    else:  # spawned processes kept the module; their logged counts came back
        counts = [logged[f"count/{i}"] for i in range(len(module.alphas) + 1)]
    values = accuracies(counts)
    return values if direction else values * len(alphas)
