"""Merge reports: report.json (everything), report.md (a paper-shaped table), report.csv and a plot.

A report is written as a whole: its files are written in a hidden staging folder inside the report
folder (same disk, so moving them is a rename), the previous report.json is removed, the other files
are moved into place, and report.json last. A report folder holding report.json holds a complete
report; a killed merge leaves at most a staging folder and parts without report.json, which the next
merge of that folder removes (:func:`remove_partial_report`) before it starts.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from orthoreg_pl.utils.io import STAGING_PREFIX, fsync_path, write_json  # noqa: E402

REPORT_SCHEMA_VERSION = 1
REPORT_FILE = "report.json"  # moved into place last: a report folder holding it is complete
REPORT_PARTS = ("report.md", "report.csv", "alpha_curve.png")  # moved in before it


def pct(x: float | None) -> str:
    """An accuracy in [0, 1] as a percentage with two decimals ("–" when missing)."""
    return "–" if x is None else f"{100 * x:.2f}"


def rows(report: dict) -> list[dict]:
    """One row per task plus the mean: the numbers the paper's tables show."""
    out = []
    for task, r in report["per_task"].items():
        out.append({"task": task, **{k: r.get(k) for k in report["columns"]}})
    out.append({"task": "mean", **report["mean"]})
    return out


def markdown(report: dict) -> str:
    if report.get("markdown"):  # a protocol that writes its own report.md (analysis: figures and tables)
        return report["markdown"]
    columns = report["columns"]
    head = f"# {report['protocol'].capitalize()}: {report['arch']}, {report['mode']} (λ={report['lam']:g}), {report['merge_method']}\n\n"
    head += f"α* = {report['chosen_alpha']}\n\n" if report.get("chosen_alpha") is not None else ""
    lines = ["| task | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in rows(report):
        cells = [
            (f"{row[c]:g}" if c == "alpha" and row[c] is not None else pct(row[c])) if c in row else "–"
            for c in columns
        ]
        lines.append(f"| {row['task']} | " + " | ".join(cells) + " |")
    if report["protocol"] == "addition":
        note = "Test accuracies in %; norm = merged / fine-tuned (same mode), abs = merged."
    elif report["protocol"] == "single_task":
        note = "Top-1 in %: zero-shot θ0 and fine-tuned θ0 + τ evaluated from the task vectors; run_finetuned_test = the run's own figure."
    else:
        note = (
            f"Test accuracies in %; target = the negated task (lower is better), control = {report['control']} "
            f"(zero-shot {pct(report['control_zeroshot']['test'])}); α per task keeps control val >= "
            f"{report['threshold']} × zero-shot."
        )
    warnings = "".join(f"\n⚠ {w}\n" for w in report.get("warnings", []))
    return head + "\n".join(lines) + "\n\n" + note + "\n" + warnings


def csv_text(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["task", *report["columns"]])
    writer.writeheader()
    writer.writerows(rows(report))
    return buffer.getvalue()


def plot(report: dict, path: Path) -> None:
    """Validation accuracy against α, with what was chosen marked: addition's per-task curves and the
    normalised mean that picks α* (marked); negation's target (solid) and control (dashed) per task in
    one colour each, each task's α marked, and the control's threshold drawn."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if report["protocol"] == "negation":
        _negation_curves(ax, report)
    else:
        _addition_curves(ax, report)
    ax.set_xlabel("α (scale of the task vector)")
    ax.set_title(f"{report['protocol']}: {report['arch']}, {report['mode']} (λ={report['lam']:g})")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    for k, warning in enumerate(report.get("warnings", [])):
        fig.text(0.01, 0.01 + 0.03 * k, f"⚠ {warning}", fontsize=6, color="darkred")
    fig.tight_layout(rect=(0, 0.03 * len(report.get("warnings", [])), 1, 1))
    fig.savefig(path, format="png", dpi=120)  # in the report's staging folder (write_report)
    plt.close(fig)


def _addition_curves(ax, report: dict) -> None:
    alphas, curves = report["alphas"], report["val_curves"]
    for name, curve in curves.items():
        if name != "normalized mean":
            ax.plot(
                alphas,
                [100 * v for v in curve],
                marker=".",
                linewidth=1,
                alpha=0.7,
                label=f"{name} (val acc)",
            )
    mean = [100 * v for v in curves["normalized mean"]]
    ax.plot(
        alphas,
        mean,
        color="black",
        linewidth=2.2,
        marker="o",
        markersize=3,
        label="normalised mean (picks α*)",
    )
    alpha = report["chosen_alpha"]
    best = mean[alphas.index(alpha)]
    ax.axvline(alpha, color="black", linestyle="--", linewidth=1)
    ax.plot([alpha], [best], marker="*", markersize=14, color="gold", markeredgecolor="black", zorder=5)
    ax.annotate(
        f"α* = {alpha:g}\n{best:.1f} %",
        (alpha, best),
        textcoords="offset points",
        xytext=(8, -22),
        fontsize=8,
    )
    ax.set_ylabel("validation accuracy (%); normalised: / fine-tuned")


def _negation_curves(ax, report: dict) -> None:
    alphas, curves = report["alphas"], report["val_curves"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, task in enumerate(report["per_task"]):
        colour = colours[k % len(colours)]
        target, control = curves[f"{task} target"], curves[f"{task} control"]
        ax.plot(alphas, [100 * v for v in target], "-", color=colour, marker=".", label=f"{task}: target")
        ax.plot(alphas, [100 * v for v in control], "--", color=colour, linewidth=1, label=f"{task}: control")
        i = alphas.index(report["per_task"][task]["alpha"])
        ax.plot(
            [alphas[i]],
            [100 * target[i]],
            marker="o",
            markersize=8,
            color=colour,
            markeredgecolor="black",
            zorder=5,
        )
    threshold = 100 * report["threshold"] * report["control_zeroshot"]["val"]
    ax.axhline(threshold, color="grey", linestyle=":", linewidth=1.5,
               label=f"threshold: {report['threshold']:g} × zero-shot {report['control']} ({threshold:.1f} %)")  # fmt: skip
    ax.set_ylabel("validation accuracy (%): target ↓ (—), control (--); ● chosen α")


def write_report(report_dir: str | Path, report: dict) -> None:
    """Write the report's files as a whole (module docstring): staged, then moved into place with
    report.json last."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}report-", dir=report_dir))
    try:
        (stage / "report.md").write_text(markdown(report))
        (stage / "report.csv").write_text(csv_text(report))
        if report["val_curves"]:  # single_task has no α curve
            plot(report, stage / "alpha_curve.png")
        write_json(stage / REPORT_FILE, {"schema_version": REPORT_SCHEMA_VERSION, **report})
        (report_dir / REPORT_FILE).unlink(missing_ok=True)  # from here the folder holds no complete report
        for name in REPORT_PARTS:
            if (stage / name).exists():
                os.replace(stage / name, report_dir / name)
            else:
                (report_dir / name).unlink(missing_ok=True)  # an older report's plot is not this one's
        os.replace(stage / REPORT_FILE, report_dir / REPORT_FILE)
        fsync_path(report_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_partial_report(report_dir: str | Path) -> list[str]:
    """The parts of a report a killed merge moved into place without its report.json: removed (a
    folder without report.json holds no report). Returns the names removed."""
    report_dir = Path(report_dir)
    if (report_dir / REPORT_FILE).exists():
        return []
    found = [name for name in REPORT_PARTS if (report_dir / name).is_file()]
    for name in found:
        (report_dir / name).unlink()
    return found
