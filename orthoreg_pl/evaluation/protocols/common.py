"""What the protocols share: the inputs a report names, mean rows."""

from __future__ import annotations

import statistics

from orthoreg_pl.task_vectors import TaskVector


def inputs(vectors: dict[str, TaskVector]) -> dict[str, dict]:
    return {
        t: {
            "path": v.info.source,
            "checksum": v.info.checksum,
            "mode": v.info.mode,
            "lam": v.info.meta.get("ortho", {}).get("lam"),
            "identity": (v.info.meta.get("identity") or {}).get("hash"),
        }
        for t, v in vectors.items()
    }


def mean_row(per_task: dict[str, dict], columns: list[str]) -> dict:
    return {c: statistics.fmean(r[c] for r in per_task.values() if r.get(c) is not None) for c in columns}
