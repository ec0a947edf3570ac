"""α curves of merge reports that already exist, so the analysis plots several modes on one figure
without evaluating anything again: addition's normalised mean validation accuracy, and negation's
mean target and control validation accuracy, against α."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from orthoreg_pl.evaluation.report_files import REPORT_FILE

PROTOCOLS = ("addition", "negation")


def _same_lam(a: object, b: float) -> bool:
    try:
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    except (TypeError, ValueError):
        return False


def find_report(
    reports_dir: str | Path,
    protocol: str,
    arch: str,
    mode: str,
    lam: float,
    seed: int,
    tasks: Sequence[str],
    merge_method: str,
) -> Path | None:
    """The newest report.json of ``protocol`` for exactly this arch, mode, λ, seed, task set and merge
    method below ``reports_dir`` (reports of other settings, e.g. another α grid, share the folder
    name and differ in the hash: the newest is taken), or None."""
    root = Path(reports_dir) / protocol / arch
    if not root.is_dir():
        return None
    found = []
    for path in root.glob(f"*/{merge_method}/seed{seed}-*/{REPORT_FILE}"):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (
            report.get("mode") == mode
            and _same_lam(report.get("lam"), lam)
            and report.get("merge_method") == merge_method
            and sorted(report.get("per_task", {})) == sorted(tasks)
        ):
            found.append(path)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def curves_of(report: dict) -> dict[str, list[float]]:
    """The curves the figure shows: addition ``normalized mean``; negation ``mean target`` and
    ``mean control`` (means over tasks of the per-task validation curves)."""
    curves = report["val_curves"]
    if report["protocol"] == "addition":
        return {"normalized mean": list(curves["normalized mean"])}
    tasks = list(report["per_task"])
    length = len(report["alphas"])
    return {
        which: [statistics.fmean(curves[f"{t} {which.split()[1]}"][i] for t in tasks) for i in range(length)]
        for which in ("mean target", "mean control")
    }


def marks_of(report: dict) -> dict:
    """What a figure of the curves marks: addition's α*, negation's control threshold."""
    if report["protocol"] == "addition":
        return {"chosen_alpha": report["chosen_alpha"]}
    return {
        "threshold": report["threshold"] * report["control_zeroshot"]["val"],
        "threshold_label": f"{report['threshold']:g} × zero-shot {report['control']}",
    }


def collect_curves(
    reports_dir: str | Path,
    modes: Sequence[tuple[str, str, float]],
    arch: str,
    seed: int,
    tasks: Sequence[str],
    merge_method: str,
) -> dict[str, dict[str, dict]]:
    """label -> protocol -> {"alphas", "curves", "report", "marks"} for the (label, mode, λ) whose
    reports exist; ``marks``: addition's α*, negation's control threshold (threshold × zero-shot val)."""
    out: dict[str, dict[str, dict]] = {}
    for label, mode, lam in modes:
        for protocol in PROTOCOLS:
            path = find_report(reports_dir, protocol, arch, mode, lam, seed, tasks, merge_method)
            if path is None:
                continue
            report = json.loads(path.read_text())
            out.setdefault(label, {})[protocol] = {
                "alphas": list(report["alphas"]),
                "curves": curves_of(report),
                "report": str(path),
                "marks": marks_of(report),
            }
    return out
