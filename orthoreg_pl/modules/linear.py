"""Linearized fine-tuning (Tangent Task Arithmetic), without and with OrthoReg (docs/method.md §3).

θ (all image-tower parameters) trains from θ0; the encoder is f(θ0; x) + J f(θ0; x)·(θ − θ0). θ0 is
the base module's non-persistent buffers, so nothing is copied per step. The task vector θ − θ0
lives in tangent space and is evaluated with the same linearized forward. LayerNorms and activations
use the lean forward-mode rules of :mod:`orthoreg_pl.models.lean_jvp`, attention that of
:mod:`orthoreg_pl.models.lean_attention` (same values; less activation memory kept for the backward
pass, and the primal keeps torch's fused attention kernels).
"""

from torch import Tensor

from orthoreg_pl.models.classifier import ImageClassifier
from orthoreg_pl.models.lean_jvp import make_jvp_lean
from orthoreg_pl.models.linearized import linearized_forward
from orthoreg_pl.modules.base import FineTuneModule

_PREFIX = "visual."


class LinearFineTuning(FineTuneModule):
    mode = "linear"
    task_vector_space = "tangent"
    lean_attention = True  # False: attention by torch's math path inside the JVP (the benchmarks' baseline)

    def __init__(self, model: ImageClassifier, **kwargs) -> None:
        # same parameters and primal numbers; less kept for the backward pass; fused attention kernels
        make_jvp_lean(model.visual, attention=self.lean_attention)
        super().__init__(model, **kwargs)

    def forward(self, images: Tensor) -> Tensor:
        theta0 = {n[len(_PREFIX) :]: self.theta0(n) for n in self.trainable_names}
        return self.model.head(linearized_forward(self.model.visual, theta0, images))


class LinearOrthoFineTuning(LinearFineTuning):
    """Same, plus OrthoReg on every 2-D entry of θ − θ0."""

    mode = "linear_ortho"
    uses_penalty = True
