"""The analysis figures: each a PNG (matplotlib, Agg) readable without the code, with the numbers it
plots beside it as ``<name>.csv`` (long format, one row per plotted number) and ``<name>.json``.

Every writer returns ``{"png": ..., "csv": ..., "json": ...}`` (file names inside ``out``) and the
CSV's columns and rows, which also become W&B tables.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from orthoreg_pl.analysis.layers import LAYER_LABELS  # noqa: E402
from orthoreg_pl.utils.io import atomic_path, write_json, write_text  # noqa: E402

DPI = 120
WEIGHTS = ("W0", "W", "tau")
WEIGHT_LABELS = {"W0": "W0 (pre-trained)", "W": "θ0 + τ (fine-tuned)", "tau": "τ = ΔW (task vector)"}
DEVIATION_AXIS = "|angle − 90°| between column pairs (degrees)"


def written(name: str) -> dict[str, str]:
    return {"png": f"{name}.png", "csv": f"{name}.csv", "json": f"{name}.json"}


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)


def _plain(value: object) -> object:
    """JSON- and CSV-safe: NaN and inf become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_data(out: Path, name: str, columns: Sequence[str], rows: Sequence[Sequence], payload: dict) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[("" if _plain(v) is None else v) for v in row] for row in rows])
    write_text(out / f"{name}.csv", buffer.getvalue())
    write_json(out / f"{name}.json", payload)


def _grid(rows: int, cols: int, width: float, height: float) -> tuple[plt.Figure, np.ndarray]:
    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows + 0.6), squeeze=False, layout="constrained"
    )
    return fig, axes


# ---- cosine heat-maps ---------------------------------------------------------------------------------


def _heatmap(ax: plt.Axes, matrix: Sequence[Sequence[float | None]], tasks: Sequence[str], vmax: float):
    """Off-diagonal cosines on a symmetric colour scale; the diagonal (always 1) in grey."""
    values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    shown = values.copy()
    np.fill_diagonal(shown, np.nan)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")
    image = ax.imshow(shown, cmap=cmap, vmin=-vmax, vmax=vmax)
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
    if len(tasks) <= 10:
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                v = values[i, j]
                text = "–" if np.isnan(v) else ("1" if i == j else f"{v:.2f}")
                strong = i != j and not np.isnan(v) and abs(v) > 0.6 * vmax
                ax.text(
                    j, i, text, ha="center", va="center", fontsize=6.5, color="white" if strong else "black"
                )
    return image


def _offdiagonal_max(tables: Sequence[Sequence[Sequence[float | None]]]) -> float:
    values = [
        abs(v)
        for m in tables
        for i, row in enumerate(m)
        for j, v in enumerate(row)
        if i != j and v is not None
    ]
    return max([*values, 1e-3])


def cosine_figures(
    cosines: Mapping[str, Mapping[str, list]], tasks: Sequence[str], out: Path, title: str
) -> dict[str, dict]:
    """``cosine_heatmap`` (whole vectors, one panel per mode) and ``cosine_by_layer`` (rows: modes,
    columns: layer types). Colours share one symmetric scale per figure, set by the largest
    off-diagonal |cosine|, so the modes compare at a glance; the diagonal (1) is grey."""
    labels = list(cosines)
    results = {}
    kinds = [k for k in LAYER_LABELS if k != "all" and any(k in cosines[m] for m in labels)]
    for name, rows_kinds in (("cosine_heatmap", ["all"]), ("cosine_by_layer", kinds)):
        tables = [cosines[m][k] for m in labels for k in rows_kinds if k in cosines[m]]
        vmax = _offdiagonal_max(tables)
        size = max(3.2, 0.42 * len(tasks) + 1.4)
        whole = name == "cosine_heatmap"  # modes side by side; per layer: a row per mode
        fig, axes = _grid(
            1 if whole else len(labels), len(labels) if whole else len(rows_kinds), size, size * 0.95
        )
        image = None
        for c, kind in enumerate(rows_kinds):
            for r, label in enumerate(labels):
                ax = axes[0, r] if whole else axes[r, c]
                if kind not in cosines[label]:
                    ax.set_axis_off()
                    ax.set_title(f"{label}\n{LAYER_LABELS[kind]}: not trained", fontsize=8)
                    continue
                image = _heatmap(ax, cosines[label][kind], tasks, vmax)
                ax.set_title(f"{label}\n{LAYER_LABELS[kind]}", fontsize=9)
        if image is not None:
            fig.colorbar(image, ax=axes, shrink=0.8, label="cosine similarity cos(τ_a, τ_b)")
        what = "whole task vectors" if name == "cosine_heatmap" else "per layer type"
        fig.suptitle(f"Cosine similarity between task vectors ({what})\n{title}", fontsize=10)
        _save(fig, out / f"{name}.png")
        columns = ["mode", "layer_type", "task_a", "task_b", "cosine"]
        data = [
            [label, kind, a, b, cosines[label][kind][i][j]]
            for label in labels
            for kind in rows_kinds
            if kind in cosines[label]
            for i, a in enumerate(tasks)
            for j, b in enumerate(tasks)
        ]
        payload = {
            "tasks": list(tasks),
            "colour_scale": [-vmax, vmax],
            "modes": {m: {k: cosines[m][k] for k in rows_kinds if k in cosines[m]} for m in labels},
        }
        write_data(out, name, columns, data, payload)
        results[name] = {"files": written(name), "columns": columns, "rows": data}
    return results


# ---- column angles ------------------------------------------------------------------------------------


def _share(counts: Sequence[int]) -> np.ndarray:
    total = max(sum(counts), 1)
    return 100.0 * np.asarray(counts, dtype=float) / total


def _step(ax: plt.Axes, edges: Sequence[float], counts: Sequence[int], **style) -> None:
    ax.stairs(_share(counts), np.asarray(edges), **style)


def angle_histogram_figures(
    edges: Mapping[str, list[float]], series: Sequence[dict], tags: Mapping[str, str], out: Path, title: str
) -> dict[str, dict]:
    """``angles_<mode tag>`` per mode (rows: layer types, columns: W0 / θ0 + τ / τ, one line per task)
    and ``angles_by_mode`` (τ pooled over tasks, one line per mode, W0 in grey): the distribution of
    |angle − 90°| between column pairs, as the share of sampled pairs per bin."""
    results = {}
    labels = list(dict.fromkeys(s["mode"] for s in series if s["weights"] != "W0"))
    w0 = {s["layer_type"]: s for s in series if s["weights"] == "W0"}
    columns = ["mode", "task", "weights", "layer_type", "bin_low", "bin_high", "count"]

    def rows_of(chosen: Sequence[dict]) -> list[list]:
        return [
            [s["mode"], s["task"], s["weights"], s["layer_type"], edges[s["layer_type"]][b],
             edges[s["layer_type"]][b + 1], c]
            for s in chosen
            for b, c in enumerate(s["counts"])
        ]  # fmt: skip

    for label in labels:
        mine = [s for s in series if s["mode"] == label]
        kinds = [k for k in LAYER_LABELS if any(s["layer_type"] == k for s in mine)]
        tasks = list(dict.fromkeys(s["task"] for s in mine if s["task"] != "all"))
        fig, axes = _grid(len(kinds), 3, 3.6, 2.5)
        for r, kind in enumerate(kinds):
            for c, weights in enumerate(WEIGHTS):
                ax = axes[r, c]
                if weights == "W0":
                    _step(ax, edges[kind], w0[kind]["counts"], color="0.3", label="pre-trained")
                else:
                    for task in tasks:
                        match = [
                            s
                            for s in mine
                            if (s["task"], s["weights"], s["layer_type"]) == (task, weights, kind)
                        ]
                        if match:
                            _step(ax, edges[kind], match[0]["counts"], label=task)
                ax.set_title(f"{LAYER_LABELS[kind]}: {WEIGHT_LABELS[weights]}", fontsize=8)
                ax.tick_params(labelsize=7)
                if r == len(kinds) - 1:
                    ax.set_xlabel(DEVIATION_AXIS, fontsize=7)
                if c == 0:
                    ax.set_ylabel("share of pairs (%)", fontsize=7)
                if r == 0 and c == 2:
                    ax.legend(fontsize=6)
        fig.suptitle(f"Deviation from orthogonality of weight columns: {label}\n{title}", fontsize=10)
        name = f"angles_{tags[label]}"
        _save(fig, out / f"{name}.png")
        chosen = [w0[k] for k in kinds] + mine
        payload = {"edges": {k: edges[k] for k in kinds}, "series": chosen}
        write_data(out, name, columns, rows_of(chosen), payload)
        results[name] = {"files": written(name), "columns": columns, "rows": rows_of(chosen)}

    kinds = [k for k in LAYER_LABELS if k in edges]
    pooled = [s for s in series if s["task"] == "all" and s["weights"] == "tau"]
    fig, axes = _grid(1, len(kinds), 3.4, 2.9)
    for c, kind in enumerate(kinds):
        ax = axes[0, c]
        if kind in w0:
            _step(ax, edges[kind], w0[kind]["counts"], color="0.6", linestyle="--", label="W0 (pre-trained)")
        for s in pooled:
            if s["layer_type"] == kind:
                _step(ax, edges[kind], s["counts"], label=f"τ {s['mode']}")
        ax.set_title(LAYER_LABELS[kind], fontsize=9)
        ax.set_xlabel(DEVIATION_AXIS, fontsize=7)
        ax.tick_params(labelsize=7)
        if c == 0:
            ax.set_ylabel("share of pairs (%)", fontsize=8)
            ax.legend(fontsize=6)
    fig.suptitle(
        f"Task vectors τ: deviation of column pairs from 90° (all tasks pooled)\n{title}", fontsize=10
    )
    _save(fig, out / "angles_by_mode.png")
    chosen = [w0[k] for k in kinds if k in w0] + pooled
    payload = {"edges": {k: edges[k] for k in kinds}, "series": chosen}
    write_data(out, "angles_by_mode", columns, rows_of(chosen), payload)
    results["angles_by_mode"] = {
        "files": written("angles_by_mode"),
        "columns": columns,
        "rows": rows_of(chosen),
    }
    return results


def angle_summary_figure(summary: Sequence[dict], out: Path, title: str) -> dict[str, dict]:
    """``angles_summary``: mean |angle − 90°| (bar) ± its spread (std, error bar) per layer type, for
    W0 and, per mode, θ0 + τ and τ pooled over tasks. ``summary`` rows: mode, task, weights,
    layer_type, pairs, mean, std, median, p95; only ``task == "all"`` rows are plotted."""
    rows = [r for r in summary if r["task"] == "all"]
    kinds = [k for k in LAYER_LABELS if any(r["layer_type"] == k for r in rows)]
    bars = list(dict.fromkeys((r["mode"], r["weights"]) for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(kinds) + 2), 4.4), layout="constrained")
    width = 0.8 / max(len(bars), 1)
    for b, (mode, weights) in enumerate(bars):
        heights, spreads = [], []
        for kind in kinds:
            match = [r for r in rows if (r["mode"], r["weights"], r["layer_type"]) == (mode, weights, kind)]
            heights.append(np.nan if not match or match[0]["mean"] is None else match[0]["mean"])
            spreads.append(np.nan if not match or match[0]["std"] is None else match[0]["std"])
        label = WEIGHT_LABELS["W0"] if weights == "W0" else f"{WEIGHT_LABELS[weights].split(' (')[0]}, {mode}"
        x = np.arange(len(kinds)) + (b - (len(bars) - 1) / 2) * width
        ax.bar(
            x, heights, width, yerr=spreads, capsize=2, label=label, color="0.6" if weights == "W0" else None
        )
    ax.set_xticks(range(len(kinds)), [LAYER_LABELS[k] for k in kinds], fontsize=8)
    ax.set_ylabel("mean |angle − 90°| (degrees), bar ± std")
    ax.set_title(
        f"Deviation from orthogonality per layer type (0 = orthogonal columns)\n{title}", fontsize=10
    )
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out / "angles_summary.png")
    columns = ["mode", "task", "weights", "layer_type", "pairs", "mean", "std", "median", "p95"]
    data = [[r[c] for c in columns] for r in rows]
    write_data(out, "angles_summary", columns, data, {"plotted": rows})
    return {"angles_summary": {"files": written("angles_summary"), "columns": columns, "rows": data}}


# ---- ξ -------------------------------------------------------------------------------------------------


def _cell_edges(alphas: Sequence[float]) -> np.ndarray:
    """Cell boundaries halfway between grid values (the outer ones mirrored): one cell per α."""
    a = np.asarray(alphas, dtype=float)
    if len(a) == 1:
        return np.array([a[0] - 0.5, a[0] + 0.5])
    middle = (a[1:] + a[:-1]) / 2
    return np.concatenate([[a[0] - (middle[0] - a[0])], middle, [a[-1] + (a[-1] - middle[-1])]])


def xi_figure(
    xi: Mapping[str, Mapping[str, dict]], pairs: Sequence[tuple[str, str]], alphas: Sequence[float], out: Path,
    title: str,
) -> dict[str, dict]:  # fmt: skip
    """``xi``: ξ(α1, α2) heat-maps, rows: task pairs, columns: modes, one colour scale for all panels
    (0 = the merged model predicts every input of both tasks as the task's own model does)."""
    labels = list(xi)
    names = [f"{a}–{b}" for a, b in pairs]
    top = max([float(np.max(xi[m][n]["xi"])) for m in labels for n in names] + [1e-3])
    fig, axes = _grid(len(pairs), len(labels), 3.8, 3.3)
    image = None
    edges = _cell_edges(alphas)
    for r, (pair, name) in enumerate(zip(pairs, names)):
        for c, label in enumerate(labels):
            ax = axes[r, c]
            grid = np.asarray(xi[label][name]["xi"], dtype=float)  # [α1, α2]
            image = ax.pcolormesh(edges, edges, grid.T, cmap="viridis", vmin=0, vmax=top)
            ax.set_xlabel(f"α1 (coefficient of τ {pair[0]})", fontsize=8)
            ax.set_ylabel(f"α2 (coefficient of τ {pair[1]})", fontsize=8)
            ax.set_title(f"{label}: {name}\nmean ξ {grid.mean():.3f}", fontsize=9)
            ticks = alphas if len(alphas) <= 6 else alphas[:: (len(alphas) + 5) // 6]
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)  # at the cells' α, not matplotlib's round numbers
            ax.tick_params(labelsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="ξ(α1, α2): sum over both tasks of the share changed")
    fig.suptitle(f"Weight-disentanglement error ξ(α1, α2)\n{title}", fontsize=10)
    _save(fig, out / "xi.png")
    columns = ["mode", "task_1", "task_2", "alpha_1", "alpha_2", "xi", "xi_task_1", "xi_task_2"]
    data = [
        [label, a, b, alphas[i], alphas[j], xi[label][n]["xi"][i][j], xi[label][n]["terms"][0][i][j],
         xi[label][n]["terms"][1][i][j]]
        for label in labels
        for (a, b), n in zip(pairs, names)
        for i in range(len(alphas))
        for j in range(len(alphas))
    ]  # fmt: skip
    payload = {
        "alphas": list(alphas),
        "pairs": [list(p) for p in pairs],
        "colour_scale": [0, top],
        "modes": xi,
    }
    write_data(out, "xi", columns, data, payload)
    return {"xi": {"files": written("xi"), "columns": columns, "rows": data}}


# ---- α curves of existing reports ---------------------------------------------------------------------


def alpha_curves_figure(curves: Mapping[str, Mapping[str, dict]], out: Path, title: str) -> dict[str, dict]:
    """``alpha_curves``: addition (normalised mean validation accuracy, α* starred) and negation (mean
    target, solid, and control, dashed, validation accuracy; the control's threshold dotted) against α,
    one colour per mode."""
    fig, axes = _grid(1, 2, 5.0, 3.8)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rows, thresholds = [], {}
    for k, (label, protocols) in enumerate(curves.items()):
        colour = colours[k % len(colours)]
        for protocol, ax in (("addition", axes[0, 0]), ("negation", axes[0, 1])):
            if protocol not in protocols:
                continue
            entry = protocols[protocol]
            for curve, values in entry["curves"].items():
                style = "--" if curve == "mean control" else "-"
                name = label if protocol == "addition" else f"{label}: {curve.split()[1]}"
                ax.plot(
                    entry["alphas"], [100 * v for v in values], style, color=colour, marker=".", label=name
                )
                rows += [[protocol, label, curve, a, v] for a, v in zip(entry["alphas"], values)]
            marks = entry.get("marks") or {}
            if marks.get("chosen_alpha") is not None:  # addition: α* on its curve
                alpha = marks["chosen_alpha"]
                value = 100 * entry["curves"]["normalized mean"][entry["alphas"].index(alpha)]
                ax.plot([alpha], [value], marker="*", markersize=13, color=colour, markeredgecolor="black",
                        zorder=5, label=f"{label}: α* = {alpha:g}")  # fmt: skip
            if marks.get("threshold") is not None and not thresholds.get(protocol):  # negation: drawn once
                thresholds[protocol] = True
                ax.axhline(100 * marks["threshold"], color="grey", linestyle=":", linewidth=1.5,
                           label=f"control threshold: {marks['threshold_label']}")  # fmt: skip
    axes[0, 0].set_title("Task addition: θ0 + α·Σ τ", fontsize=9)
    axes[0, 0].set_ylabel("normalised mean validation accuracy (%)", fontsize=8)
    axes[0, 1].set_title("Task negation: θ0 − α·τ (mean over tasks)", fontsize=9)
    axes[0, 1].set_ylabel("validation accuracy (%): target —, control --", fontsize=8)
    for ax in axes[0]:
        ax.set_xlabel("α", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(f"α curves of the merge reports\n{title}", fontsize=10)
    _save(fig, out / "alpha_curves.png")
    columns = ["protocol", "mode", "curve", "alpha", "value"]
    write_data(out, "alpha_curves", columns, rows, {"modes": curves})
    return {"alpha_curves": {"files": written("alpha_curves"), "columns": columns, "rows": rows}}
