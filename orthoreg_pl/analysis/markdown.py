"""The analysis report.md: every figure embedded with what it shows, its data files, and small tables
of the numbers a reader compares first."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from orthoreg_pl.analysis.figures import WEIGHT_LABELS
from orthoreg_pl.analysis.layers import LAYER_LABELS


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def offdiagonal(matrix: Sequence[Sequence[float | None]]) -> list[float]:
    """The cosines between distinct tasks (upper triangle), where defined."""
    return [v for i, row in enumerate(matrix) for j, v in enumerate(row) if j > i and v is not None]


def _files(files: Mapping[str, str]) -> str:
    return f"![{files['png']}]({files['png']})\n\nData: [{files['csv']}]({files['csv']}), [{files['json']}]({files['json']})\n"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def analysis_markdown(
    title: str,
    modes: Sequence[dict],
    cosines: Mapping[str, Mapping[str, list]],
    summary: Sequence[dict],
    xi: Mapping[str, Mapping[str, dict]],
    xi_settings: Mapping[str, object],
    curves_note: str,
    figures: Mapping[str, Mapping[str, str]],
) -> str:
    """The whole report.md; ``figures``: figure name -> its files (see figures.written)."""
    parts = [f"# Analysis: {title}\n"]
    parts.append(
        "Modes compared (one fine-tuned run per task each): "
        + ", ".join(f"`{m['label']}` ({m['runs']})" for m in modes)
        + ".\n"
    )

    parts.append("## 1. Cosine similarity between task vectors\n")
    parts.append(
        "cos(τ_a, τ_b) of the flattened task vectors, over the whole vector and restricted to one layer type. "
        "Near 0: the tasks moved the weights in orthogonal directions (the paper's claim for OrthoReg).\n"
    )
    kinds = ["all", *[k for k in LAYER_LABELS if k != "all"]]
    rows = []
    for label, tables in cosines.items():
        for kind in kinds:
            if kind in tables:
                values = offdiagonal(tables[kind])
                mean_abs = statistics.fmean(abs(v) for v in values) if values else None
                top = max((abs(v) for v in values), default=None)
                rows.append([label, LAYER_LABELS[kind], _num(mean_abs), _num(top)])
    parts.append(_table(["mode", "part", "mean \\|cos\\| (a ≠ b)", "max \\|cos\\|"], rows))
    for name in ("cosine_heatmap", "cosine_by_layer"):
        if name in figures:
            parts.append(_files(figures[name]))

    parts.append("## 2. Angles between weight columns\n")
    parts.append(
        "|angle − 90°| between pairs of column vectors of each weight matrix (sampled pairs on big matrices), "
        "for the pre-trained W0, the fine-tuned θ0 + τ and the task vector τ; 0° = orthogonal columns. "
        "Pooled over the tasks and the blocks of each layer type.\n"
    )
    rows = [
        [r["mode"], WEIGHT_LABELS[r["weights"]], LAYER_LABELS[r["layer_type"]], str(r["pairs"]),
         _num(r["mean"], 2), _num(r["std"], 2), _num(r["median"], 2), _num(r["p95"], 2)]
        for r in summary
        if r["task"] == "all"
    ]  # fmt: skip
    parts.append(
        _table(
            ["mode", "weights", "layer type", "pairs", "mean (°)", "std (°)", "median (°)", "p95 (°)"], rows
        )
    )
    for name in ("angles_summary", "angles_by_mode", *sorted(n for n in figures if n.startswith("angles_") and n not in ("angles_summary", "angles_by_mode"))):  # fmt: skip
        if name in figures:
            parts.append(_files(figures[name]))

    parts.append("## 3. Weight-disentanglement error ξ(α1, α2)\n")
    parts.append(
        "ξ(α1, α2) = Σ_t share of task t's inputs whose prediction under θ0 + α1τ1 + α2τ2 differs from "
        "that under θ0 + αtτt (Ortiz-Jimenez et al. 2023), 0 ≤ ξ ≤ 2; lower is better disentangled. "
        f"Split: {xi_settings['split']}; inputs per task: {xi_settings['inputs']}; grid: "
        f"{len(xi_settings['alphas'])}×{len(xi_settings['alphas'])} over "
        f"[{xi_settings['alphas'][0]:g}, {xi_settings['alphas'][-1]:g}].\n"
    )
    rows = []
    for label, pairs in xi.items():
        for name, entry in pairs.items():
            grid = entry["xi"]
            flat = [v for row in grid for v in row]
            rows.append([label, name, _num(statistics.fmean(flat)), _num(grid[-1][-1]), _num(max(flat))])
    parts.append(
        _table(["mode", "pair", "mean ξ over the grid", "ξ(α1, α2) at the last grid point", "max ξ"], rows)
    )
    if "xi" in figures:
        parts.append(_files(figures["xi"]))

    parts.append("## 4. α curves of task addition and negation\n")
    parts.append(curves_note + "\n")
    if "alpha_curves" in figures:
        parts.append(_files(figures["alpha_curves"]))
    return "\n".join(parts)
