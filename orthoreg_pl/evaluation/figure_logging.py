"""A report's own figures and tables to W&B: what a protocol lists under ``figures`` (name -> PNG in the
report folder) and ``tables`` (name -> {"columns", "data"}) in its body, logged as images and tables
under ``<protocol>/<name>``. The analysis protocol fills both; the others list none."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import WandbLogger


def log_figures(logger: WandbLogger, report: dict, report_dir: str | Path) -> list[str]:
    """Log every listed figure (that exists) and table; returns the keys logged."""
    protocol = report["protocol"]
    logged = []
    for name, png in (report.get("figures") or {}).items():
        path = Path(report_dir) / png
        if path.is_file():
            logger.log_image(key=f"{protocol}/{name}", images=[str(path)])
            logged.append(f"{protocol}/{name}")
    for name, table in (report.get("tables") or {}).items():
        logger.log_table(key=f"{protocol}/{name}_table", columns=list(table["columns"]), data=table["data"])
        logged.append(f"{protocol}/{name}_table")
    return logged
