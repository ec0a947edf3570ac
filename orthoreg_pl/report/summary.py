"""The end of a journey (``make quickstart``, ``make campaign``): the key numbers in a few lines, where
the reports, figures and W&B runs are, how to view them, and the next command.

Printed by ``python -m orthoreg_pl.report DIR... --next "<command>"`` after the tables, so the last
screen a newcomer sees says what happened and what to do next.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from orthoreg_pl.config.lam import format_lambda
from orthoreg_pl.evaluation.report_files import pct

RULE = "─" * 100


def _label(report: dict) -> str:
    lam = report.get("lam") or 0
    return report["mode"] + (f" λ={format_lambda(lam)}" if lam else "")


def key_numbers(reports: Sequence[dict]) -> list[str]:
    """One line per protocol: the mean test scores of each (mode, λ), as the tables show them."""
    lines = []
    addition = [r for r in reports if r["protocol"] == "addition"]
    if addition:
        cells = [f"{_label(r)} {pct(r['mean']['norm'])} % (α*={r['chosen_alpha']:g})" for r in addition]
        lines.append(
            f"addition, test Norm.Acc (mean of {len(addition[0]['per_task'])} tasks): " + " · ".join(cells)
        )
    negation = [r for r in reports if r["protocol"] == "negation"]
    if negation:
        cells = [f"{_label(r)} {pct(r['mean']['target'])} / {pct(r['mean']['control'])} %" for r in negation]
        lines.append(
            f"negation, test target ↓ / control {negation[0]['control']} (mean of {len(negation[0]['per_task'])} "
            "tasks): " + " · ".join(cells)
        )
    return lines


def wandb_runs(folders: Sequence[Path]) -> list[Path]:
    """The offline W&B runs below ``folders`` (one folder per job: ``.../wandb/offline-run-*``)."""
    return sorted(p for folder in folders for p in Path(folder).rglob("offline-run-*") if p.is_dir())


def closing(
    key_lines: Sequence[str], places: Sequence[str], folders: Sequence[Path], next_command: str | None
) -> str:
    """The closing block: the key numbers, where things are, the W&B runs below ``folders`` and how to
    view them, the next command."""
    lines = ["", RULE, "Done. In short:", *(f"  {line}" for line in key_lines), *places]
    offline = wandb_runs(folders)
    if offline:
        where = " ".join(shlex.quote(str(f)) for f in folders)
        lines.append(
            f"W&B: {len(offline)} offline runs (one per job). To view them, log in once (`wandb login`), then: "
            f"find {where} -type d -name 'offline-run-*' -exec .venv/bin/wandb sync {{}} +"
        )
    if next_command:
        lines.append(f"Next: {next_command}")
    return "\n".join([*lines, RULE])


def journey_end(folders: Sequence[Path], reports: Sequence[dict], next_command: str) -> str:
    """The end of ``make quickstart`` (see the module docstring)."""
    places = []
    merged = sorted({str(Path(r["config"]["paths"]["output_dir"])) for r in reports if r.get("config")})
    if merged:
        holding = [f for f in folders if any(Path(m).resolve().is_relative_to(f.resolve()) for m in merged)]
        where = " ".join(shlex.quote(str(f)) for f in holding or folders)
        places.append(
            f"Reports: {len(merged)} merge folders (report.md, report.csv, alpha_curve.png each) under {where}"
        )
    for r in reports:
        if r["protocol"] == "analysis" and r.get("config"):
            figures = Path(r["config"]["paths"]["output_dir"]) / "report.md"
            places.append(
                f"Figures: {figures} ({len(r.get('figures') or {})} figures: cosines, angles, ξ, α curves)"
            )
    return closing(key_numbers(reports), places, folders, next_command)
