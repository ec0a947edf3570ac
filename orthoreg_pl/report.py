"""Tables of finished runs: ``python -m orthoreg_pl.report RUNS_DIR`` prints zero-shot vs fine-tuned accuracy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orthoreg_pl.run_folder import META_FILE, read_meta


def collect_runs(runs_dir: str | Path) -> list[dict]:
    """meta.json of every finished run below ``runs_dir``, sorted by task, mode and λ."""
    metas = [read_meta(p.parent) for p in sorted(Path(runs_dir).rglob(META_FILE))]
    return sorted(metas, key=lambda m: (m["task"], m["mode"], m["ortho"]["lam"], m["seed"]))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def single_task_table(metas: list[dict]) -> Table:
    table = Table(
        title="Single-task top-1 accuracy (%): zero-shot θ0 vs fine-tuned",
        caption="ZS = zero-shot, FT = fine-tuned",
    )
    for column in ("task", "mode", "λ", "ZS val", "ZS test", "FT val", "FT test", "steps"):
        table.add_column(column, justify="left" if column in ("task", "mode") else "right")
    for m in metas:
        zs, ft = m["accuracy"]["zeroshot"] or {}, m["accuracy"]["finetuned"]
        table.add_row(
            m["task"],
            m["mode"],
            f"{m['ortho']['lam']:g}",
            _pct(zs.get("val")),
            _pct(zs.get("test")),
            _pct(ft["val"]),
            _pct(ft["test"]),
            str(m["steps"]),
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "runs_dir", type=Path, help="folder searched recursively for finished runs (meta.json)"
    )
    args = parser.parse_args(argv)
    metas = collect_runs(args.runs_dir)
    if not metas:
        print(f"error: no finished runs (meta.json) under {args.runs_dir}", file=sys.stderr)
        return 2
    Console(width=max(100, Console().width)).print(single_task_table(metas))
    return 0


if __name__ == "__main__":
    sys.exit(main())
