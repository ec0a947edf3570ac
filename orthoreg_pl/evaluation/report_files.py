"""Merge reports: report.json (everything), report.md (a paper-shaped table), report.csv and a plot."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from orthoreg_pl.utils.io import atomic_path, write_json, write_text  # noqa: E402

REPORT_SCHEMA_VERSION = 1
REPORT_FILE = "report.json"  # written last: a report folder holding it is complete


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
    return head + "\n".join(lines) + "\n\n" + note + "\n"


def csv_text(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["task", *report["columns"]])
    writer.writeheader()
    writer.writerows(rows(report))
    return buffer.getvalue()


def plot(report: dict, path: Path) -> None:
    """Validation accuracy against α per task (and the selection criterion)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    alphas = report["alphas"]
    for name, curve in report["val_curves"].items():
        ax.plot(alphas, [100 * v for v in curve], marker=".", label=name)
    if report.get("chosen_alpha") is not None:
        ax.axvline(report["chosen_alpha"], color="k", linestyle="--", linewidth=1, label="α*")
    ax.set_xlabel("α")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{report['protocol']}: {report['arch']}, {report['mode']} (λ={report['lam']:g})")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_report(report_dir: str | Path, report: dict) -> None:
    """Write all four files (each atomically); report.json last marks a complete report."""
    report_dir = Path(report_dir)
    write_text(report_dir / "report.md", markdown(report))
    write_text(report_dir / "report.csv", csv_text(report))
    if report["val_curves"]:  # single_task has no α curve
        plot(report, report_dir / "alpha_curve.png")
    write_json(report_dir / REPORT_FILE, {"schema_version": REPORT_SCHEMA_VERSION, **report})
