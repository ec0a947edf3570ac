"""What a campaign's seeds say: per (mode, λ), every metric's mean over seeds with its 95 % interval,
and the paired difference against the λ = 0 reference of the mode's family (``standard_ortho`` against
``standard``, ``attn_ortho`` against ``attn``, ...), seed by seed, with a verdict in words
(statistics.py says how the intervals are made).
"""

from __future__ import annotations

from collections.abc import Sequence

from orthoreg_pl.campaign.statistics import Estimate, estimate, paired_difference, verdict

# every metric a row has, and which way is better
METRICS = {
    "objective": None,  # the campaign's own direction
    "addition_val_norm": "maximize",
    "addition_test_abs": "maximize",
    "addition_test_norm": "maximize",
    "negation_target_val": "minimize",
    "negation_target_test": "minimize",
    "negation_control_test": "maximize",
    "single_zeroshot_test": "maximize",
    "single_finetuned_val": "maximize",
    "single_finetuned_test": "maximize",
}
VERDICTS = ("objective", "addition_test_norm", "negation_target_test", "single_finetuned_test")


def reference_mode(mode: str, plain: Sequence[str]) -> str | None:
    """The mode without the penalty of ``mode``'s family, when the campaign trained it."""
    base = mode.removesuffix("_ortho")
    return base if base != mode and base in plain else None


def _as_dict(e: Estimate | None) -> dict | None:
    return (
        None
        if e is None
        else {"mean": e.mean, "half_width": e.half_width, "n": e.n, "low": e.low, "high": e.high}
    )


def aggregate(rows: Sequence[dict], plain: Sequence[str], direction: str) -> list[dict]:
    """One entry per (mode, λ) in row order: ``{mode, lam, seeds, metrics: {m: interval},
    differences: {m: interval}, verdicts: {m: words}, reference}`` (intervals as dicts, or None)."""
    points: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        points.setdefault((row["mode"], row["lam"]), []).append(row)
    out = []
    for (mode, lam), group in points.items():
        reference = reference_mode(mode, plain) if lam else None
        theirs = [r for r in rows if r["mode"] == reference and r["lam"] == 0] if reference else []
        entry = {
            "mode": mode,
            "lam": lam,
            "seeds": [r["seed"] for r in group],
            "reference": reference,
            "metrics": {},
            "differences": {},
            "verdicts": {},
        }
        for metric, better in METRICS.items():
            better = better or direction
            entry["metrics"][metric] = _as_dict(estimate([r.get(metric) for r in group]))
            if reference:
                difference = paired_difference(
                    {r["seed"]: r.get(metric) for r in group}, {r["seed"]: r.get(metric) for r in theirs}
                )
                entry["differences"][metric] = _as_dict(difference)
                if metric in VERDICTS:
                    entry["verdicts"][metric] = verdict(difference, better)
        out.append(entry)
    return out


def best_point(points: Sequence[dict], direction: str) -> dict | None:
    """The (mode, λ) whose mean objective over seeds is best."""
    scored = [p for p in points if p["metrics"]["objective"] is not None]
    sign = 1 if direction == "maximize" else -1
    return max(scored, key=lambda p: sign * p["metrics"]["objective"]["mean"]) if scored else None


def interval_text(interval: dict | None, scale: float = 100.0) -> str:
    """``83.05 ± 1.20`` (percent), ``83.05`` for one seed, ``–`` when missing."""
    if interval is None:
        return "–"
    if interval["half_width"] is None:
        return f"{scale * interval['mean']:.2f}"
    return f"{scale * interval['mean']:.2f} ± {scale * interval['half_width']:.2f}"
