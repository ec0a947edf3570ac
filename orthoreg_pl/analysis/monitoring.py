"""What the training-time orthogonality monitor logs, as one pure function of the current ΔW.

Per layer type (layers.LAYER_TYPES): the share of the OrthoReg penalty its matrices carry, ‖ΔW‖ of
its parameters, and the mean and spread of |angle − 90°| between sampled column pairs of its ΔW, so a
dashboard shows where the penalty acts and how orthogonal each kind of update stays.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from orthoreg_pl.analysis.geometry import column_angles, deviation_from_orthogonal, penalty_terms
from orthoreg_pl.analysis.layers import group_by_type

PREFIX = "monitor"


@torch.no_grad()
def orthogonality_statistics(
    deltas: Mapping[str, Tensor], matrices: Mapping[str, Tensor], max_pairs: int, seed: int = 0
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(metrics, deviations per layer type) of the current update.

    ``deltas``: every trained tensor's θ − θ0 (for the norms); ``matrices``: the ΔW the penalty acts
    on (for its terms and the angles). Metrics, as 0-d float32 tensors on the weights' device:
    ``monitor/delta_norm`` and ``monitor/ortho_penalty`` (unsquared, min-side Gram: the reference
    penalty whatever the run's own options), and per layer type ``monitor/<type>/delta_norm``,
    ``/penalty_share``, ``/angle_dev_mean`` and ``/angle_dev_std`` (degrees; left out while ΔW of that
    type is still zero, e.g. before the first step)."""
    metrics: dict[str, Tensor] = {}
    squares = {name: torch.linalg.vector_norm(d.detach().float()).square() for name, d in deltas.items()}
    if squares:
        metrics[f"{PREFIX}/delta_norm"] = torch.stack(list(squares.values())).sum().sqrt()
    for kind, names in group_by_type(squares).items():
        metrics[f"{PREFIX}/{kind}/delta_norm"] = torch.stack([squares[n] for n in names]).sum().sqrt()
    deviations: dict[str, Tensor] = {}
    if not matrices:
        return metrics, deviations
    names = list(matrices)
    terms = dict(zip(names, penalty_terms([matrices[n] for n in names])))
    total = torch.stack(list(terms.values())).sum()
    metrics[f"{PREFIX}/ortho_penalty"] = total
    for kind, group in group_by_type(names).items():
        metrics[f"{PREFIX}/{kind}/penalty_share"] = torch.stack(
            [terms[n] for n in group]
        ).sum() / total.clamp_min(1e-30)
        shapes: dict[tuple, list[Tensor]] = {}  # equally shaped matrices (a type's blocks) in one batch
        for n in group:
            shapes.setdefault(tuple(matrices[n].shape), []).append(matrices[n])
        found = [
            deviation_from_orthogonal(column_angles(same, max_pairs, seed + i))
            for i, same in enumerate(shapes.values())
        ]
        values = torch.cat(found)
        if values.numel():
            deviations[kind] = values
            metrics[f"{PREFIX}/{kind}/angle_dev_mean"] = values.mean()
            metrics[f"{PREFIX}/{kind}/angle_dev_std"] = values.std(unbiased=False)
    return metrics, deviations
