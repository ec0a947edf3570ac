"""The campaign's verdict: one row per (mode, λ, seed), as JSON, Markdown, CSV, a PNG and W&B.

The numbers are read from the merge reports the campaign's jobs wrote (their folders come from the
jobs' outcome logs), never recomputed: the objective in a row is the value in its addition report.
Single-task accuracies are the references every report carries (measured by the merge, at its precision).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from orthoreg_pl.campaign.evidence import (  # noqa: E402
    METRICS,
    VERDICTS,
    aggregate,
    best_point,
    interval_text,
)
from orthoreg_pl.campaign.plan import CampaignPlan  # noqa: E402
from orthoreg_pl.campaign.stages import StageResult  # noqa: E402
from orthoreg_pl.evaluation.report_files import REPORT_FILE, pct  # noqa: E402
from orthoreg_pl.utils.io import atomic_path, write_json, write_text  # noqa: E402

SUMMARY_SCHEMA_VERSION = 1

# column -> what it is (the Markdown table's header note and the CSV's column order)
COLUMNS = {
    "mode": "fine-tuning mode",
    "lam": "λ (0: mode without the penalty)",
    "seed": "fine-tuning seed",
    "objective": "the campaign's objective (default: addition val Norm.Acc at α*)",
    "addition_alpha": "addition: α* chosen on validation",
    "addition_val_norm": "addition: mean normalised validation accuracy at α*",
    "addition_test_abs": "addition: mean test accuracy of the merged model",
    "addition_test_norm": "addition: mean test accuracy / fine-tuned test accuracy",
    "negation_target_val": "negation: mean validation accuracy of the negated tasks at their α (lower is better)",
    "negation_target_test": "negation: mean test accuracy of the negated tasks (lower is better)",
    "negation_control_test": "negation: mean control-task test accuracy",
    "single_zeroshot_test": "mean zero-shot test accuracy of the tasks",
    "single_finetuned_val": "mean fine-tuned validation accuracy (the runs' own)",
    "single_finetuned_test": "mean fine-tuned test accuracy (the runs' own)",
    "status": "ok, or what is missing and why",
}
PERCENT = {c for c in COLUMNS if c.startswith(("addition_", "negation_", "single_"))} - {"addition_alpha"}


def _parse(overrides: list[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in overrides if "=" in o)


def _point_of(overrides: dict[str, str], plan: CampaignPlan) -> tuple[str, float, int] | None:
    mode = overrides.get("mode")
    if mode is None or "seed" not in overrides:
        return None
    lam = float(overrides["ortho.lam"]) if mode in plan.penalized and "ortho.lam" in overrides else 0.0
    return mode, lam, int(overrides["seed"])


def _key(mode: str, lam: float, seed: int) -> tuple[str, float, int]:
    return mode, float(lam), int(seed)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _single_task(report: dict) -> dict:
    refs = report.get("references") or {}
    return {
        "single_zeroshot_test": _mean((r.get("zeroshot") or {}).get("test") for r in refs.values()),
        "single_finetuned_val": _mean(r["finetuned"]["val"] for r in refs.values()),
        "single_finetuned_test": _mean(r["finetuned"]["test"] for r in refs.values()),
    }


def build_summary(plan: CampaignPlan, stages: list[StageResult], objective: DictConfig) -> dict:
    """Rows from the reports of the campaign's merge jobs, problems from the failed jobs."""
    reports: dict[tuple, dict[str, dict]] = {}
    problems: dict[tuple, dict[str, list[str]]] = {}  # point -> stage (train/merge) -> messages
    for stage in stages:
        for outcome in stage.outcomes:
            overrides = _parse(outcome["overrides"])
            point = _point_of(overrides, plan)
            if point is None:
                continue
            if outcome["outcome"] in ("failed", "interrupted"):
                what = overrides.get("dataset") or overrides.get("experiment") or stage.label
                stage_problems = problems.setdefault(_key(*point), {}).setdefault(
                    stage.label.split("-")[0], []
                )
                stage_problems.append(f"{what} {outcome['outcome']}: {outcome['message']}")
                continue
            path = Path(outcome.get("output_dir") or "") / REPORT_FILE
            if stage.label.startswith("merge") and path.is_file():
                report = json.loads(path.read_text())
                reports.setdefault(_key(*point), {})[report["protocol"]] = {
                    **report,
                    "path": str(path.parent),
                }

    rows, per_task = [], {}
    for mode, lam, seed in plan.points():
        key = _key(mode, lam, seed)
        found = reports.get(key, {})
        row = {"mode": mode, "lam": lam, "seed": seed}
        addition, negation = found.get("addition"), found.get("negation")
        if addition:
            row["addition_alpha"] = addition["chosen_alpha"]
            row["addition_val_norm"] = addition["val_at_alpha"]["val_norm"]
            row["addition_test_abs"] = addition["mean"]["abs"]
            row["addition_test_norm"] = addition["mean"]["norm"]
        if negation:
            row["negation_target_val"] = negation["val_at_alpha"]["target_val"]
            row["negation_target_test"] = negation["mean"]["target"]
            row["negation_control_test"] = negation["mean"]["control"]
        source = addition or negation
        if source:
            row.update(_single_task(source))
            per_task[f"{mode}/lam{lam:g}/seed{seed}"] = {
                task: {
                    "finetuned_test": ref["finetuned"]["test"],
                    "zeroshot_test": (ref.get("zeroshot") or {}).get("test"),
                    **({"addition_test": addition["per_task"][task]["abs"]} if addition else {}),
                    **({"negation_target_test": negation["per_task"][task]["target"]} if negation else {}),
                }
                for task, ref in source["references"].items()
            }
        chosen = found.get(str(objective.protocol))
        values = (chosen or {}).get("val_at_alpha") or {}
        row["objective"] = values.get(str(objective.metric))
        failed = problems.get(key, {})
        # a failed training run explains the missing reports: its merges' own errors would only repeat it
        notes = failed.get("train") or failed.get("merge") or []
        notes += [f"no {p} report" for p in plan.protocols if p not in found and not notes]
        row["status"] = "; ".join(notes) if notes else "ok"
        row["reports"] = {p: r["path"] for p, r in found.items()}
        rows.append(row)

    points = aggregate(rows, plan.plain, str(objective.direction))
    best = best_point(points, str(objective.direction))
    summary = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "campaign": plan.name,
        "identity": plan.identity,
        "arch": plan.arch,
        "tasks": list(plan.tasks.values()),
        "grid": {
            "penalized_modes": list(plan.penalized),
            "reference_modes": list(plan.plain),
            "lambdas": list(plan.lambdas),
            "seeds": list(plan.seeds),
        },
        "protocols": list(plan.protocols),
        "not_run": plan.skipped_protocols,
        "objective": {
            "protocol": str(objective.protocol),
            "metric": str(objective.metric),
            "direction": str(objective.direction),
            "value": None if best is None else best["metrics"]["objective"]["mean"],  # over the seeds
            "best": None if best is None else {k: best[k] for k in ("mode", "lam", "seeds")},
        },
        "columns": COLUMNS,
        "points": points,
        "rows": rows,
        "per_task": per_task,
        "stages": [
            {
                "label": s.label,
                "seconds": round(s.seconds, 2),
                "returncode": s.returncode,
                "jobs": {k: s.count(k) for k in ("finished", "skipped", "failed", "interrupted")},
                "command": s.command,
            }
            for s in stages
        ],
    }
    summary["markdown"] = markdown(summary)
    return summary


def _cell(column: str, value) -> str:
    if value is None:
        return "–"
    if column in PERCENT or column == "objective":
        return pct(value)
    if column == "lam" or column == "addition_alpha":
        return f"{value:g}"
    return str(value)


def verdict_lines(summary: dict) -> list[str]:
    """Per penalised (mode, λ): what its seeds say against the λ = 0 reference of its family."""
    names = {"objective": objective_name(summary), **{m: COLUMNS[m] for m in VERDICTS if m in COLUMNS}}
    lines = []
    for point in summary["points"]:
        if not point["verdicts"]:
            continue
        seeds = len(point["seeds"])
        lines.append(
            f"* {point['mode']} λ={point['lam']:g} against {point['reference']} ({seeds} seed{'s' * (seeds > 1)}):"
        )
        lines += [f"  {names[m]}: {words}" for m, words in point["verdicts"].items()]
    if lines and len(summary["grid"]["seeds"]) == 1:
        lines.append("  One seed: no interval can be given; run seeds=[0,1,2] for intervals.")
    return lines


INTERVAL_COLUMNS = ("objective", "addition_test_norm", "negation_target_test", "single_finetuned_test")


def markdown(summary: dict) -> str:
    objective = summary["objective"]
    best = objective["best"]
    lines = [
        f"# Campaign {summary['campaign']}: {summary['arch']} on {', '.join(summary['tasks'])}",
        "",
        f"Objective: {objective['protocol']} {objective['metric']} ({objective['direction']}); best: "
        + (
            "none"
            if best is None
            else f"{best['mode']} λ={best['lam']:g} ({pct(objective['value'])} %, mean of {len(best['seeds'])} seed(s))"
        ),
        "",
        "## What the seeds say",
        "",
        *(
            verdict_lines(summary)
            or ["No penalised point has a λ = 0 reference of its family in this campaign."]
        ),
        "",
        "## Mean ± 95 % interval over seeds (Student's t; points, %)",
        "",
        "| mode | λ | seeds | " + " | ".join(INTERVAL_COLUMNS) + " | Δ objective vs λ = 0 |",
        "|" + "---|" * (len(INTERVAL_COLUMNS) + 4),
    ]
    for point in summary["points"]:
        cells = [interval_text(point["metrics"][c]) for c in INTERVAL_COLUMNS]
        delta = interval_text(point["differences"].get("objective")) if point["reference"] else "–"
        lines.append(
            f"| {point['mode']} | {point['lam']:g} | {len(point['seeds'])} | "
            + " | ".join(cells)
            + f" | {delta} |"
        )
    lines += ["", "## Every run", ""]
    columns = list(COLUMNS)
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in summary["rows"]:
        lines.append("| " + " | ".join(_cell(c, row.get(c)) for c in columns) + " |")
    lines += [
        "",
        "Accuracies in %. " + "; ".join(f"{c}: {d}" for c, d in COLUMNS.items() if c not in ("mode", "seed")),
    ]
    for protocol, why in summary["not_run"].items():
        lines.append(f"\n{protocol} was not run: {why}.")
    return "\n".join(lines) + "\n"


def intervals_csv(summary: dict) -> str:
    """Per (mode, λ): each metric's mean and interval, and its paired difference to the λ = 0 reference."""
    buffer = io.StringIO()
    fields = ["mode", "lam", "seeds", "reference"]
    for metric in METRICS:
        fields += [f"{metric}_{k}" for k in ("mean", "low", "high")]
        fields += [f"{metric}_diff_{k}" for k in ("mean", "low", "high")]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for point in summary["points"]:
        row = {
            "mode": point["mode"],
            "lam": point["lam"],
            "seeds": len(point["seeds"]),
            "reference": point["reference"],
        }
        for metric in METRICS:
            for prefix, source in ((metric, point["metrics"]), (f"{metric}_diff", point["differences"])):
                interval = source.get(metric) or {}
                row.update({f"{prefix}_{k}": interval.get(k) for k in ("mean", "low", "high")})
        writer.writerow(row)
    return buffer.getvalue()


def csv_text(summary: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(summary["rows"])
    return buffer.getvalue()


PANELS = (
    ("objective", "objective: {metric} at α* (%)"),
    ("addition_test_norm", "addition: test Norm.Acc at α* (%)"),
    ("negation_target_test", "negation: target test accuracy (%), lower is better"),
    ("single_finetuned_test", "single task: fine-tuned test accuracy (%)"),
)


def objective_name(summary: dict) -> str:
    return f"{summary['objective']['protocol']} {summary['objective']['metric']}"


def by_lambda(points: list[dict], mode: str, column: str) -> tuple[list[float], list[float], list[float]]:
    """λ, the mean over seeds of ``column`` and its interval's half-width (0 for one seed), in %."""
    found = sorted(
        (p["lam"], p["metrics"][column]) for p in points if p["mode"] == mode and p["metrics"].get(column)
    )
    return (
        [lam for lam, _ in found],
        [100 * i["mean"] for _, i in found],
        [100 * (i["half_width"] or 0.0) for _, i in found],
    )


def plot(summary: dict, path: Path) -> None:
    """Each metric against λ (log scale), one line per penalised mode; modes without the penalty are
    the dashed horizontal lines they are compared with."""
    points, grid = summary["points"], summary["grid"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (column, title) in zip(axes.flat, PANELS):
        drawn = False
        for mode in grid["penalized_modes"]:
            lams, values, half = by_lambda(points, mode, column)
            if lams:
                ax.errorbar(lams, values, yerr=half, marker="o", capsize=4, label=mode)
                drawn = True
        for i, mode in enumerate(grid["reference_modes"]):
            _, values, half = by_lambda(points, mode, column)
            if values:
                colour = f"C{len(grid['penalized_modes']) + i}"
                ax.axhline(values[0], color=colour, linestyle="--", label=f"{mode} (λ=0)")
                if half[0]:
                    ax.axhspan(values[0] - half[0], values[0] + half[0], color=colour, alpha=0.15)
                drawn = True
        ax.set_title(title.format(metric=objective_name(summary)), fontsize=10)
        ax.set_xlabel("λ (penalty weight)")
        if grid["lambdas"] and min(grid["lambdas"]) > 0:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            why = summary["not_run"].get(column.split("_")[0], "no values")
            ax.text(
                0.5,
                0.5,
                f"not available:\n{why}",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=8,
            )
    seeds = len(grid["seeds"])
    fig.suptitle(
        f"Campaign {summary['campaign']}: {summary['arch']}, {len(summary['tasks'])} tasks"
        + (f", mean ± 95 % interval over {seeds} seeds" if seeds > 1 else ", one seed (no interval)"),
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_summary(folder: Path, summary: dict) -> None:
    """summary.md, summary.csv, summary.png, then summary.json (last: it marks a complete summary)."""
    write_text(folder / "summary.md", summary["markdown"])
    write_text(folder / "summary.csv", csv_text(summary))
    write_text(folder / "summary_intervals.csv", intervals_csv(summary))
    plot(summary, folder / "summary.png")
    write_json(folder / "summary.json", {k: v for k, v in summary.items() if k != "markdown"})
