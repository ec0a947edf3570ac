"""The analysis protocol at work: the paper's three figures for your own runs, side by side for several modes.

(a) cosine similarity between the task vectors of different tasks (whole vector and per layer type);
(b) the distribution of |angle − 90°| between weight columns of W0, θ0 + τ and τ, per layer type;
(c) the weight-disentanglement error ξ(α1, α2) on a grid for chosen task pairs (docs/method.md §5),
    on the merge engine (encoder built once, weights written in place; two JVPs per batch for
    linearized vectors);
(d) the addition and negation α curves of the modes, read from report.json files that exist.

The pipeline loads the task vectors of ``mode`` / ``ortho.lam``; the other entries of
``protocol.modes`` are loaded here with the same architecture, seed and tasks. Every figure is a PNG
with its numbers as CSV and JSON in the report folder, embedded in its report.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from orthoreg_pl.analysis.figures import (
    alpha_curves_figure,
    angle_histogram_figures,
    angle_summary_figure,
    cosine_figures,
    xi_figure,
)
from orthoreg_pl.analysis.geometry import (
    column_angles,
    cosine_tables,
    deviation_from_orthogonal,
    histogram,
    shared_edges,
    summarize,
)
from orthoreg_pl.analysis.layers import group_by_type
from orthoreg_pl.analysis.markdown import analysis_markdown, offdiagonal
from orthoreg_pl.config.lam import effective_lambda
from orthoreg_pl.data import eval_dataloader
from orthoreg_pl.data.eval_cache import CachedBatches
from orthoreg_pl.evaluation.curves import collect_curves
from orthoreg_pl.evaluation.disentanglement import xi_grid
from orthoreg_pl.evaluation.evaluator import MergeEvaluator
from orthoreg_pl.evaluation.protocols.analysis_options import ModeSpec, check_settings, mode_specs
from orthoreg_pl.evaluation.protocols.common import inputs, mean_row
from orthoreg_pl.evaluation.selection import check_splits, hydra_value, load_vectors, select_runs
from orthoreg_pl.runs.folder import read_meta
from orthoreg_pl.task_vectors import TaskVector

log = logging.getLogger(__name__)
COLUMNS = ["cos_offdiag_mean_abs", "tau_dev90_mean", "xi_mean"]


def mode_checksums(cfg: DictConfig) -> dict[str, dict[str, str | None]]:
    """label -> task -> the task-vector sha256 each mode's run recorded in meta.json (found as the
    protocol finds them; no file is hashed): what a finished analysis report must match to be reused
    (the pipeline's own inputs cover merge.py's mode only)."""
    tasks = list(cfg.tasks)
    out = {}
    for k, spec in enumerate(mode_specs(cfg, ModeSpec(str(cfg.mode.name), effective_lambda(cfg)))):
        runs = select_runs(cfg, spec.mode, spec.lam, tasks, None if k == 0 else spec_overrides(spec))
        out[spec.label] = {t: read_meta(runs[t]).get("task_vector_sha256") for t in tasks}
    return out


# ---- task vectors of the other modes -----------------------------------------------------------------


def spec_overrides(spec: ModeSpec) -> list[str]:
    """A compared mode's run-selecting settings as training overrides (``optim.lr=3e-05``)."""
    return [f"{key}={hydra_value(value)}" for key, value in spec.settings.items()]


def load_mode(cfg: DictConfig, spec: ModeSpec, tasks: Sequence[str], evaluator: MergeEvaluator) -> dict:
    """task -> TaskVector of ``spec``'s runs (same arch, seed and tasks as the merge), checked as the
    pipeline checks its own: they fit together, come from this θ0 and were split as evaluated here."""
    vectors = load_vectors(cfg, spec.mode, spec.lam, tasks, evaluator.identity, spec_overrides(spec))
    check_splits(vectors, evaluator.checksums)
    return vectors


# ---- (b) column angles --------------------------------------------------------------------------------


def angle_distributions(
    theta0: Mapping[str, Tensor], sets: Mapping[str, Mapping[str, TaskVector]], settings: dict
) -> tuple[dict[str, list[float]], list[dict], list[dict]]:
    """(bin edges per layer type, histogram series, summary rows) of |angle − 90°| for W0, θ0 + τ and
    τ of every mode and task, per layer type; each matrix's sampled columns are the same for W0, θ0 + τ
    and τ and for every task (one seed per matrix), so the distributions compare pair for pair."""
    matrices = sorted(
        {k for vs in sets.values() for v in vs.values() for k, t in v.tensors.items() if t.ndim == 2}
    )
    seeds = {k: settings["angle_seed"] + i for i, k in enumerate(matrices)}

    def deviations(weights: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
        found = [
            deviation_from_orthogonal(
                column_angles(weights[n], settings["max_pairs"], seeds[n], settings["vectors"])
            ).cpu()
            for n in names
        ]
        return torch.cat(found) if found else torch.zeros(0)

    raw: list[tuple[dict, Tensor]] = []
    for kind, names in group_by_type(matrices).items():
        raw.append(({"mode": "pretrained", "task": "all", "weights": "W0", "layer_type": kind},
                    deviations(theta0, names)))  # fmt: skip
    for label, vectors in sets.items():
        for kind, names in group_by_type(
            k for k, t in next(iter(vectors.values())).tensors.items() if t.ndim == 2
        ).items():
            pooled: dict[str, list[Tensor]] = {"W": [], "tau": []}
            for task, vector in vectors.items():
                tau = {n: vector[n] for n in names}
                full = {n: theta0[n] + tau[n].to(theta0[n].device, theta0[n].dtype) for n in names}
                for weights, source in (("W", full), ("tau", tau)):
                    values = deviations(source, names)
                    pooled[weights].append(values)
                    raw.append(
                        ({"mode": label, "task": task, "weights": weights, "layer_type": kind}, values)
                    )
            for weights, parts in pooled.items():
                raw.append(
                    ({"mode": label, "task": "all", "weights": weights, "layer_type": kind}, torch.cat(parts))
                )
    edges = {
        kind: shared_edges([v for key, v in raw if key["layer_type"] == kind], settings["bins"])
        for kind in dict.fromkeys(key["layer_type"] for key, _ in raw)
    }
    series = [{**key, "counts": histogram(v, edges[key["layer_type"]])} for key, v in raw]
    summary = [{**key, **summarize(v)} for key, v in raw]
    return edges, series, summary


# ---- (c) ξ --------------------------------------------------------------------------------------------


def xi_loader(
    evaluator: MergeEvaluator, cfg: DictConfig, task: str, split: str, limit: int | None
) -> DataLoader:
    """The split's loader, or one over ``limit`` evenly spaced samples of it (deterministic, all classes
    of a class-sorted split), sharded as the engine's loaders are."""
    loader = evaluator.loaders[task][split]
    dataset = loader.dataset.dataset if isinstance(loader.dataset, CachedBatches) else loader.dataset
    if limit is None or limit >= len(dataset):
        return loader
    picked = [int(i * len(dataset) / limit) for i in range(limit)]
    return eval_dataloader(
        Subset(dataset, picked), cfg.data.eval_batch_size, cfg.data.num_workers, shard=True
    )


def xi_grids(
    cfg: DictConfig,
    evaluator: MergeEvaluator,
    sets: Mapping[str, Mapping[str, TaskVector]],
    alphas: Sequence[float],
    settings: dict,
) -> tuple[dict[str, dict[str, dict]], dict[str, int]]:
    """label -> "A–B" -> {"xi": [G][G], "terms": [2][G][G]} (α1 along the first index), and the
    number of inputs per task."""
    tasks = sorted({t for pair in settings["pairs"] for t in pair})
    loaders = {t: xi_loader(evaluator, cfg, t, settings["split"], settings["max_samples"]) for t in tasks}
    out: dict[str, dict[str, dict]] = {}
    for label, vectors in sets.items():
        out[label] = {}
        for a, b in settings["pairs"]:
            tangent = vectors[a].info.space == "tangent"
            grid, terms = xi_grid(
                evaluator.trainer, evaluator.module, [loaders[a], loaders[b]],
                [evaluator.heads[a], evaluator.heads[b]], [vectors[a].tensors, vectors[b].tensors], alphas, tangent,
            )  # fmt: skip
            out[label][f"{a}–{b}"] = {"xi": grid.tolist(), "terms": terms.tolist()}
    sizes = {t: _size(loader) for t, loader in loaders.items()}
    return out, sizes


def _size(loader: DataLoader) -> int:
    dataset = loader.dataset
    return len(dataset.dataset) if isinstance(dataset, CachedBatches) else len(dataset)


# ---- the protocol -------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def mode_row(label: str, cosines: Mapping, summary: Sequence[dict], xi: Mapping) -> dict[str, float | None]:
    """The report table's row of one mode: mean |cos| between distinct tasks (whole vector), mean
    |angle − 90°| of τ's columns (mean over layer types), mean ξ over the grid and the pairs."""
    off = offdiagonal(cosines[label]["all"])
    tau = [r["mean"] for r in summary if (r["mode"], r["task"], r["weights"]) == (label, "all", "tau")]
    grids = [v for entry in xi[label].values() for row in entry["xi"] for v in row]
    return {
        "cos_offdiag_mean_abs": _mean([abs(v) for v in off]),
        "tau_dev90_mean": _mean([v for v in tau if v is not None]),
        "xi_mean": _mean(grids),
    }


def run_analysis(
    cfg: DictConfig, evaluator: MergeEvaluator, vectors: dict[str, TaskVector], alphas: list[float]
) -> dict:
    """Cosines, column angles, ξ grids and α curves of every mode; figures and report.md in
    ``paths.output_dir``. ``alphas`` is the ξ grid of both coefficients."""
    settings = check_settings(cfg)
    tasks = list(cfg.tasks)
    own = ModeSpec(str(cfg.mode.name), effective_lambda(cfg))
    specs = mode_specs(cfg, own)
    refs = evaluator.task_references(vectors)  # cached: what the pipeline's cross-check reads
    sets = {own.label: vectors}
    for spec in specs[1:]:
        sets[spec.label] = load_mode(cfg, spec, tasks, evaluator)
    tags = {spec.label: spec.tag for spec in specs}

    cosines = {label: cosine_tables(vs) for label, vs in sets.items()}
    theta0 = {name: evaluator.module.theta0(name) for name in evaluator.module.param_names}
    edges, series, summary = angle_distributions(theta0, sets, settings)
    xi, sizes = xi_grids(cfg, evaluator, sets, alphas, settings)
    curves = {}
    if settings["curves"]:
        curves = collect_curves(
            cfg.paths.reports_dir, [(s.label, s.mode, s.lam) for s in specs], cfg.model.arch, cfg.seed, tasks,
            str(cfg.merge_method_name),
        )  # fmt: skip

    title = f"{cfg.model.arch}, seed {cfg.seed}; tasks {', '.join(tasks)}"
    figures: dict[str, dict] = {}
    out = Path(cfg.paths.output_dir)
    if evaluator.trainer.is_global_zero:
        figures.update(cosine_figures(cosines, tasks, out, title))
        figures.update(angle_histogram_figures(edges, series, tags, out, title))
        figures.update(angle_summary_figure(summary, out, title))
        figures.update(xi_figure(xi, settings["pairs"], alphas, out, title))
        if curves:
            figures.update(alpha_curves_figure(curves, out, title))

    per_mode = {label: mode_row(label, cosines, summary, xi) for label in sets}
    modes = [
        {"label": s.label, "mode": s.mode, "lam": s.lam, "settings": s.settings, "tag": s.tag,
         "runs": f"{len(sets[s.label])} runs", "inputs": inputs(sets[s.label])}
        for s in specs
    ]  # fmt: skip
    found = ", ".join(f"{label}: {', '.join(p)}" for label, p in curves.items())
    curves_note = (
        f"Read from the existing report.json files under `{cfg.paths.reports_dir}` ({found})."
        if curves
        else f"No addition or negation report.json of these modes under `{cfg.paths.reports_dir}` "
        f"(run `merge.py` with protocol addition / negation for them first)."
    )
    xi_settings = {"split": settings["split"], "inputs": sizes, "alphas": list(alphas)}
    markdown = analysis_markdown(
        title,
        modes,
        cosines,
        summary,
        xi,
        xi_settings,
        curves_note,
        {n: f["files"] for n, f in figures.items()},
    )
    if evaluator.trainer.is_global_zero:  # report.md is body["markdown"], written with report.json (whole)
        log.info("analysis figures: %s (%d PNG, each with CSV and JSON beside it)", out, len(figures))
    return {
        "alphas": list(alphas),
        "val_curves": {},
        "val_at_alpha": {"xi_mean": per_mode[own.label]["xi_mean"]},
        "chosen_alpha": None,
        "columns": COLUMNS,
        "per_task": per_mode,  # one row per mode (the table's first column)
        "mean": mean_row(per_mode, COLUMNS),
        "references": refs,
        "analysis": {
            "modes": modes,
            "mode_checksums": {m["label"]: {t: i["checksum"] for t, i in m["inputs"].items()} for m in modes},
            "xi": {"pairs": [list(p) for p in settings["pairs"]], **xi_settings, "grids": xi},
            "cosines": cosines,
            "angles": {
                "vectors": settings["vectors"],
                "max_pairs": settings["max_pairs"],
                "summary": summary,
            },
            "curves": curves,
        },
        "figures": {name: f["files"]["png"] for name, f in figures.items()},
        "tables": {
            name: {"columns": f["columns"], "data": f["rows"]}
            for name, f in figures.items()
            if not name.startswith("angles_") or name == "angles_summary"
        },  # fmt: skip
        "markdown": markdown,
    }
