"""Linearized fine-tuning (Tangent Task Arithmetic), without and with OrthoReg (method.md §3).

θ (all image-tower parameters) trains from θ0; the encoder is f(θ0; x) + J f(θ0; x)·(θ − θ0). θ0 is
the base module's non-persistent buffers, so nothing is copied per step. The task vector θ − θ0
lives in tangent space and is evaluated with the same linearized forward.
"""

from torch import Tensor

from orthoreg_pl.models.linearized import linearized_forward
from orthoreg_pl.modules.base import FineTuneModule

_PREFIX = "visual."


class LinearFineTuning(FineTuneModule):
    mode = "linear"
    task_vector_space = "tangent"

    def forward(self, images: Tensor) -> Tensor:
        theta0 = {n[len(_PREFIX) :]: self.theta0(n) for n in self.trainable_names}
        return self.model.head(linearized_forward(self.model.visual, theta0, images))


class LinearOrthoFineTuning(LinearFineTuning):
    """Same, plus OrthoReg on every 2-D entry of θ − θ0."""

    mode = "linear_ortho"
    uses_penalty = True
