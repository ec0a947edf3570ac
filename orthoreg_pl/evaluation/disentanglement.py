"""ξ(α1, α2) on a grid with the merge engine: the encoder built once, θ0 + α1τ1 + α2τ2 written in place.

One ``Trainer.validate`` pass per task of the pair reads its inputs once; for every batch the weights
of each grid point are written into the encoder (``torch._foreach`` copies, no rebuild) and the batch
is classified once per point, so the whole grid costs one read of the data and one forward per
point. Linearized (tangent) vectors use the closed form f(θ0) + α1·Jτ1 + α2·Jτ2: two JVPs per batch
for the whole grid. Disagreement counts are summed across processes (exact under ``trainer=ddp``).

:func:`xi_by_rebuilding` is the yardstick: a fresh model per grid point, as a script without the
engine would do it; the tests and ``benchmarks/analysis.py`` compare the two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import lightning as L
import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp
from torch.utils.data import DataLoader
from torchmetrics import Metric

from orthoreg_pl.analysis.xi import disagreements, evaluation_points, xi_from_counts
from orthoreg_pl.evaluation.engine import MergeEvalModule
from orthoreg_pl.models.classifier import ImageClassifier
from orthoreg_pl.models.heads import ZeroShotHead
from orthoreg_pl.models.linearized import linearized_forward, math_attention

_VISUAL = "visual."


class DisagreementCounts(Metric):
    """Per grid point, inputs predicted differently from the reference; and the number of inputs."""

    full_state_update = False

    def __init__(self, size: int) -> None:
        super().__init__()
        self.add_state("counts", default=torch.zeros(size, size, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, counts: Tensor, inputs: int) -> None:
        self.counts += counts
        self.total += inputs

    def compute(self) -> Tensor:
        """[G·G counts..., total] as float64 (exact integers), synced across processes."""
        return torch.cat([self.counts.reshape(-1), self.total.view(1)]).double()


class DisentanglementModule(L.LightningModule):
    """Counts, for one task of a pair, the inputs whose prediction under θ0 + α1τ1 + α2τ2 differs from
    that under the task's own θ0 + αtτt, at every grid point. θ0 and the encoder are the merge
    engine's (``base``), shared, not copied."""

    def __init__(self, base: MergeEvalModule) -> None:
        super().__init__()
        self.base = base
        self.keys: list[str] = []
        self.points: list[tuple[float, float]] = []
        self.grid_index = torch.zeros(1, 1, dtype=torch.long)
        self.reference_index = torch.zeros(1, 1, dtype=torch.long)
        self.closed_form = False
        self.metric = DisagreementCounts(1)
        self.result: Tensor | None = None

    def configure(
        self,
        head: Tensor,
        directions: Sequence[Mapping[str, Tensor]],
        alphas: Sequence[float],
        task_index: int,
        closed_form: bool,
    ) -> None:
        """The task's head, the pair (τ1, τ2), the grid and which task of the pair the next pass reads."""
        if len(directions) != 2:
            raise ValueError(f"ξ needs exactly two task vectors, got {len(directions)}")
        self.base.model.head = ZeroShotHead(head)
        unknown = sorted(set().union(*directions) - set(self.base.param_names))
        if unknown:
            raise KeyError(f"task vector keys not in the encoder: {unknown[:5]}")
        for i in range(len(self.keys)):
            delattr(self, f"tau1_{i}")
            delattr(self, f"tau2_{i}")
        self.keys = sorted(set().union(*directions))
        for i, key in enumerate(self.keys):
            for which, direction in zip(("tau1", "tau2"), directions):
                tau = direction.get(key)
                tau = torch.zeros_like(self.base.theta0(key)) if tau is None else tau.detach().clone()
                self.register_buffer(f"{which}_{i}", tau, persistent=False)
        self.points, self.grid_index, self.reference_index = evaluation_points(alphas, task_index)
        self.closed_form = closed_form
        self.metric = DisagreementCounts(len(alphas))
        self.result = None

    def _taus(self, which: str) -> list[Tensor]:
        return [getattr(self, f"{which}_{i}") for i in range(len(self.keys))]

    def _targets(self) -> list[nn.Parameter]:
        return [self.base.model.get_parameter(k) for k in self.keys]

    @torch.no_grad()
    def write_weights(self, alpha1: float, alpha2: float) -> None:
        """θ ← θ0 + α1·τ1 + α2·τ2 in place, for the keys of τ1 and τ2."""
        targets = self._targets()
        torch._foreach_copy_(targets, [self.base.theta0(k) for k in self.keys])
        if alpha1:
            torch._foreach_add_(targets, self._taus("tau1"), alpha=alpha1)
        if alpha2:
            torch._foreach_add_(targets, self._taus("tau2"), alpha=alpha2)

    def _tangent_logits(self, images: Tensor) -> Tensor:
        """[P, B, C] logits of the linearized encoder at every point, from two JVPs."""
        visual = self.base.model.visual
        names = [n for n in self.base.param_names if n.startswith(_VISUAL)]
        primals = {n[len(_VISUAL) :]: self.base.theta0(n) for n in names}
        directional = []
        for which in ("tau1", "tau2"):
            tangents = {k: torch.zeros_like(v) for k, v in primals.items()}
            for key, tau in zip(self.keys, self._taus(which)):
                tangents[key[len(_VISUAL) :]] = tau
            with math_attention():
                features, jvp_out = jvp(
                    lambda p: functional_call(visual, p, (images,)), (primals,), (tangents,)
                )
            directional.append(jvp_out)
        coefficients = torch.tensor(self.points, dtype=features.dtype, device=features.device)
        a1, a2 = coefficients[:, 0].view(-1, 1, 1), coefficients[:, 1].view(-1, 1, 1)
        return self.base.model.head(features.unsqueeze(0) + a1 * directional[0] + a2 * directional[1])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        if self.closed_form:
            predictions = self._tangent_logits(images).argmax(dim=-1)
        else:
            predictions = []
            for alpha1, alpha2 in self.points:
                self.write_weights(alpha1, alpha2)
                predictions.append(self.base.model(images).argmax(dim=-1))
            predictions = torch.stack(predictions)
        self.metric.update(disagreements(predictions, self.grid_index, self.reference_index), labels.numel())

    def on_validation_epoch_end(self) -> None:
        self.result = self.metric.compute()
        self.write_weights(0.0, 0.0)  # leave θ0 in place
        if self.trainer.world_size > 1:  # logged so that they also come back from spawned processes
            for i, count in enumerate(self.result):
                self.log(f"xi_count/{i}", count.float(), sync_dist=False)  # exact below 2**24


def disagreement_counts(
    trainer: L.Trainer,
    module: DisentanglementModule,
    loader: DataLoader,
    head: Tensor,
    directions: Sequence[Mapping[str, Tensor]],
    alphas: Sequence[float],
    task_index: int,
    closed_form: bool = False,
) -> tuple[Tensor, int]:
    """([G, G] disagreement counts, number of inputs) of one task of the pair, in one pass over ``loader``."""
    module.configure(head, directions, alphas, task_index, closed_form)
    logged = trainer.validate(module, dataloaders=loader, verbose=False)[0]
    if module.result is not None:
        flat = module.result
    else:  # spawned processes kept the module; their logged counts came back
        n = len(alphas) ** 2 + 1
        flat = torch.tensor([logged[f"xi_count/{i}"] for i in range(n)], dtype=torch.float64)
    size = len(alphas)
    return flat[:-1].round().long().view(size, size), int(flat[-1].round())


def xi_grid(
    trainer: L.Trainer,
    base: MergeEvalModule,
    loaders: Sequence[DataLoader],
    heads: Sequence[Tensor],
    directions: Sequence[Mapping[str, Tensor]],
    alphas: Sequence[float],
    closed_form: bool = False,
) -> tuple[Tensor, Tensor]:
    """(ξ [G, G], per-task terms [2, G, G]) of a task pair: one pass over each task's inputs."""
    module = DisentanglementModule(base)
    counts, totals = [], []
    for index in (0, 1):
        c, n = disagreement_counts(
            trainer, module, loaders[index], heads[index], directions, alphas, index, closed_form
        )
        counts.append(c)
        totals.append(n)
    return xi_from_counts(counts, totals)


@torch.no_grad()
def xi_by_rebuilding(
    build_visual: Callable[[], nn.Module],
    loaders: Sequence[DataLoader],
    heads: Sequence[Tensor],
    directions: Sequence[Mapping[str, Tensor]],
    alphas: Sequence[float],
    tangent: bool = False,
) -> tuple[Tensor, Tensor]:
    """The yardstick: for every distinct point a fresh encoder from ``build_visual()`` with θ0 + α1τ1 +
    α2τ2 added to it (the linearized forward at θ0 for tangent vectors), every task's data read again."""
    predictions: dict[tuple[tuple[float, float], int], Tensor] = {}

    def predict(point: tuple[float, float], index: int) -> Tensor:
        if (point, index) not in predictions:
            visual = build_visual().eval()
            theta0 = {n: p.detach().clone() for n, p in visual.named_parameters()}
            model = ImageClassifier(visual, heads[index]).eval()
            for alpha, direction in zip(point, directions):
                for key, tau in direction.items():
                    model.get_parameter(key).add_(tau, alpha=alpha)
            out = []
            for images, _ in loaders[index]:
                if tangent:
                    out.append(model.head(linearized_forward(visual, theta0, images)).argmax(-1))
                else:
                    out.append(model(images).argmax(-1))
            predictions[(point, index)] = torch.cat(out)
        return predictions[(point, index)]

    grid = [float(a) for a in alphas]
    counts = [torch.zeros(len(grid), len(grid), dtype=torch.long) for _ in range(2)]
    totals = [0, 0]
    for index in (0, 1):
        for i, a1 in enumerate(grid):
            for j, a2 in enumerate(grid):
                reference = (a1, 0.0) if index == 0 else (0.0, a2)
                merged, own = predict((a1, a2), index), predict(reference, index)
                counts[index][i, j] = int((merged != own).sum())
                totals[index] = len(merged)
    return xi_from_counts(counts, totals)
