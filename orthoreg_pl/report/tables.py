"""Tables of finished runs and merge reports, and the command that prints them
(``python -m orthoreg_pl.report DIR...``, report/__main__.py).

Fine-tuning runs (meta.json) give the single-task table (zero-shot vs fine-tuned accuracy), one table
for all the folders given, so the authors' imported runs (``source`` reference, import_reference.py)
sit beside native ones; merge reports (report.json) give the task-addition and task-negation tables
shaped like the paper's.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orthoreg_pl.evaluation.report_files import REPORT_FILE, pct
from orthoreg_pl.report.summary import journey_end
from orthoreg_pl.runs.folder import FINISHED, META_FILE, read_meta, run_status
from orthoreg_pl.runs.identity import differing


def run_source(meta: dict) -> str:
    """``reference`` for a run imported from the authors' checkpoints, ``native`` for one trained here."""
    return "reference" if meta.get("imported_from") else "native"


def _run_key(meta: dict) -> tuple:
    return (meta["task"], meta["mode"], meta["ortho"]["lam"], meta["seed"], run_source(meta) != "native")


def collect_runs(runs_dir: str | Path) -> list[dict]:
    """meta.json of every finished run below ``runs_dir``, sorted by task, mode, λ, seed and source."""
    metas = [read_meta(p.parent) for p in sorted(Path(runs_dir).rglob(META_FILE))]
    metas = [m for m in metas if run_status(m) == FINISHED]
    return sorted(metas, key=_run_key)


def collect_reports(folder: str | Path) -> list[dict]:
    """report.json of every merge report below ``folder``."""
    reports = [json.loads(p.read_text()) for p in sorted(Path(folder).rglob(REPORT_FILE))]
    return sorted(reports, key=lambda r: (r["protocol"], r["arch"], r["mode"], r["lam"], r["merge_method"]))


def distinguishing(items: list[dict], key: Callable[[dict], tuple]) -> list[str]:
    """Per item, the identity settings in which it differs from the items sharing its ``key`` (``""``
    when none does): several runs of one task, mode, λ and seed (another lr, a 5-step trial) get one
    row each, told apart by what differs."""
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    out = [""] * len(items)
    for members in groups.values():
        if len(members) < 2:
            continue
        settings = [((items[i].get("identity") or {}).get("settings") or {}) for i in members]
        keys = differing(settings)
        for i, own in zip(members, settings):
            out[i] = " ".join(f"{k}={own.get(k)}" for k in keys) or (items[i].get("identity") or {}).get(
                "hash", ""
            )
    return out


def single_task_table(metas: list[dict]) -> Table:
    table = Table(
        title="Single-task top-1 accuracy (%): zero-shot θ0 vs fine-tuned",
        caption="ZS = zero-shot, FT = fine-tuned",
    )
    settings = distinguishing(metas, _run_key)
    columns = ["task", "mode", "λ", "source", *(["settings"] if any(settings) else [])]
    for column in (*columns, "ZS val", "ZS test", "FT val", "FT test", "steps"):
        table.add_column(
            column, justify="left" if column in ("task", "mode", "source", "settings") else "right"
        )
    for m, differs in zip(metas, settings):
        accuracy = m.get("accuracy") or {}
        zs, ft = accuracy.get("zeroshot") or {}, accuracy.get("finetuned") or {}
        steps = m.get("steps")
        table.add_row(
            m["task"], m["mode"], f"{m['ortho']['lam']:g}", run_source(m), *([differs] if any(settings) else []),
            pct(zs.get("val")),
            pct(zs.get("test")), pct(ft.get("val")), pct(ft.get("test")), "–" if steps is None else str(steps),
        )  # fmt: skip
    return table


def merge_table(reports: list[dict], protocol: str) -> Table:
    """One row per (mode, λ, method): addition Abs./Norm. accuracy, or negation target/control accuracy."""
    addition = protocol == "addition"
    first, second = ("abs", "norm") if addition else ("target", "control")
    title = (
        "Task addition: Abs. / Norm. test accuracy (%)"
        if addition
        else "Task negation: target ↓ / control ↑ test accuracy (%)"
    )
    table = Table(title=title)
    tasks = list(reports[0]["per_task"])
    settings = distinguishing(
        reports, lambda r: (r["arch"], r["mode"], r["lam"], r["merge_method"], r.get("seed"))
    )
    extra = ["settings"] if any(settings) else []
    for column in ("mode", "λ", "method", *extra, "α*", *tasks, "mean"):
        table.add_column(column, justify="left" if column in ("mode", "method", "settings") else "right")
    for r, differs in zip(reports, settings):
        cells = [f"{pct(r['per_task'][t][first])} / {pct(r['per_task'][t][second])}" for t in tasks]
        alpha = f"{r['chosen_alpha']:g}" if addition else "per task"
        mean = f"{pct(r['mean'][first])} / {pct(r['mean'][second])}"
        table.add_row(
            r["mode"], f"{r['lam']:g}", r["merge_method"], *([differs] if extra else []), alpha, *cells, mean
        )
    if not addition:
        r = reports[0]
        table.caption = (
            f"control: {r['control']} (zero-shot test {pct(r['control_zeroshot']['test'])}); "
            f"per task, α keeps control val ≥ {r['threshold']} × zero-shot"
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "folders", type=Path, nargs="+", help="folders searched recursively for meta.json / report.json"
    )
    parser.add_argument(
        "--next",
        metavar="COMMAND",
        help="end with the key numbers, where everything is, and this next command",
    )
    args = parser.parse_args(argv)
    console = Console(width=max(160, Console().width))
    metas = sorted((m for folder in args.folders for m in collect_runs(folder)), key=_run_key)
    if metas:  # one table: imported and native runs of a task side by side
        console.print(single_task_table(metas))
    found, every_report = bool(metas), []
    for folder in args.folders:
        reports = collect_reports(folder)
        every_report += reports
        for protocol in ("addition", "negation"):
            by_tasks: dict[tuple, list[dict]] = {}  # one table per task set (columns are tasks)
            for r in reports:
                if r["protocol"] == protocol:
                    by_tasks.setdefault(tuple(r["per_task"]), []).append(r)
            for selected in by_tasks.values():
                console.print(merge_table(selected, protocol))
        found = found or bool(reports)
    if not found:
        folders = ", ".join(str(f) for f in args.folders)
        print(
            f"error: no finished runs (meta.json) or merge reports (report.json) under {folders}",
            file=sys.stderr,
        )
        return 2
    if args.next:
        print(journey_end(args.folders, every_report, args.next))
    return 0
