"""What a λ search shows: ``search/summary.{json,md,csv,png}`` over the whole study (every trial, the
baseline, the best trial or the Pareto front), a W&B run per trial named by its λ, and a section of
the campaign's own summary.md that points to it."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from orthoreg_pl.runs.loggers import quiet_settings, wandb_mode  # noqa: E402
from orthoreg_pl.utils.io import atomic_path, write_json, write_text  # noqa: E402

SECTION = "<!-- λ search -->"


def trial_rows(study, fields: tuple) -> list[dict]:
    """One row per trial: number, state, λ (0 for the baseline), lr, one value per objective."""
    rows = []
    for t in study.trials:
        row = {
            "trial": t.number,
            "state": t.state.name.lower(),
            "baseline": bool(t.user_attrs.get("baseline")),
            "lam": t.user_attrs.get("lam", t.params.get("lam")),
            "lr": t.params.get("lr"),
        }
        for k, (field, _) in enumerate(fields):
            row[field] = t.values[k] if t.values else None
        rows.append(row)
    return rows


def pareto_front(rows: list[dict], fields: tuple) -> list[int]:
    """The trials no other complete trial dominates (better or equal in every objective, better in one)."""
    done = [r for r in rows if r["state"] == "complete"]
    signs = [1 if direction == "maximize" else -1 for _, direction in fields]

    def dominates(a: dict, b: dict) -> bool:
        pairs = [(s * a[f], s * b[f]) for s, (f, _) in zip(signs, fields)]
        return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

    return [r["trial"] for r in done if not any(dominates(o, r) for o in done if o is not r)]


def best_trial(rows: list[dict], fields: tuple) -> dict | None:
    (field, direction), *rest = fields
    done = [r for r in rows if r["state"] == "complete" and not r["baseline"]]
    if rest or not done:
        return None
    sign = 1 if direction == "maximize" else -1
    return max(done, key=lambda r: sign * r[field])


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def markdown(summary: dict) -> str:
    fields, rows = summary["objectives"], summary["trials"]
    lines = [
        f"# λ search of campaign {summary['campaign']}: {len(rows)} trials",
        "",
        "Objectives: " + ", ".join(f"{f} ({d})" for f, d in fields) + "; each trial's value is its mean over "
        f"seeds {summary['seeds']}.",
        "",
    ]
    baseline = next((r for r in rows if r["baseline"]), None)
    if baseline:
        lines.append(
            "Baseline (λ = 0, the modes without the penalty): "
            + ", ".join(_pct(baseline[f]) + " %" for f, _ in fields)
        )
    if summary.get("best"):
        b = summary["best"]
        lines.append(f"Best trial: #{b['trial']}, λ = {b['lam']:.4g}: {_pct(b[fields[0][0]])} %")
    if summary.get("pareto") is not None:
        lines.append(f"Pareto front (not dominated in both objectives): trials {summary['pareto']}")
    lines += [
        "",
        "| trial | state | λ | lr | " + " | ".join(f for f, _ in fields) + " |",
        "|" + "---|" * (4 + len(fields)),
    ]
    for r in rows:
        lam = "0 (baseline)" if r["baseline"] else ("–" if r["lam"] is None else f"{r['lam']:.4g}")
        lr = "–" if r["lr"] is None else f"{r['lr']:.3g}"
        lines.append(
            f"| {r['trial']} | {r['state']} | {lam} | {lr} | "
            + " | ".join(_pct(r[f]) for f, _ in fields)
            + " |"
        )
    lines += ["", "Values in %. The figure: search/summary.png."]
    return "\n".join(lines) + "\n"


def csv_text(summary: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(summary["trials"][0]) if summary["trials"] else ["trial"])
    writer.writeheader()
    writer.writerows(summary["trials"])
    return buffer.getvalue()


def plot(summary: dict, path: Path) -> None:
    """One objective: the value against λ (log scale) with the baseline as a line, and the history with
    the best so far. Two: the trials in the plane of both, the Pareto front joined, the baseline marked."""
    fields, rows = summary["objectives"], summary["trials"]
    done = [r for r in rows if r["state"] == "complete" and not r["baseline"]]
    baseline = next((r for r in rows if r["baseline"] and r["state"] == "complete"), None)
    if len(fields) == 1:
        ((field, direction),) = fields
        fig, (ax, hist) = plt.subplots(1, 2, figsize=(11, 4.5))
        ax.scatter(
            [r["lam"] for r in done], [100 * r[field] for r in done], color="C0", zorder=3, label="trials"
        )
        for r in done:
            ax.annotate(
                f"#{r['trial']}",
                (r["lam"], 100 * r[field]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        if baseline:
            ax.axhline(100 * baseline[field], color="grey", linestyle="--", label="baseline (λ = 0)")
        if summary.get("best"):
            b = summary["best"]
            ax.plot(
                [b["lam"]],
                [100 * b[field]],
                marker="*",
                markersize=16,
                color="gold",
                markeredgecolor="black",
                zorder=4,
                label=f"best: λ = {b['lam']:.3g}",
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1, 2, 5, 10, 20, ... as plain numbers
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("λ (penalty weight, log scale)")
        ax.set_ylabel(f"{field} (%), mean over seeds")
        ax.set_title(f"objective against λ ({direction})", fontsize=10)
        ordered = sorted(done, key=lambda r: r["trial"])
        sign = 1 if direction == "maximize" else -1
        best_so_far, running = [], None
        for r in ordered:
            running = r[field] if running is None else (max if sign > 0 else min)(running, r[field])
            best_so_far.append(100 * running)
        hist.plot([r["trial"] for r in ordered], [100 * r[field] for r in ordered], "o", label="trial")
        hist.plot([r["trial"] for r in ordered], best_so_far, "-", color="C1", label="best so far")
        if baseline:
            hist.axhline(100 * baseline[field], color="grey", linestyle="--", label="baseline (λ = 0)")
        hist.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are whole numbers
        hist.set_xlabel("trial number")
        hist.set_ylabel(f"{field} (%)")
        hist.set_title("history", fontsize=10)
        for a in (ax, hist):
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
    else:
        (fx, dx), (fy, dy) = fields
        fig, ax = plt.subplots(figsize=(7, 5.5))
        ax.scatter([100 * r[fx] for r in done], [100 * r[fy] for r in done], color="C0", label="trials")
        for r in done:
            ax.annotate(
                f"λ={r['lam']:.2g}",
                (100 * r[fx], 100 * r[fy]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        front = sorted((r for r in done if r["trial"] in summary["pareto"]), key=lambda r: r[fx])
        ax.plot(
            [100 * r[fx] for r in front], [100 * r[fy] for r in front], "-o", color="C3", label="Pareto front"
        )
        if baseline:
            ax.plot(
                [100 * baseline[fx]],
                [100 * baseline[fy]],
                marker="s",
                markersize=9,
                color="grey",
                label="baseline (λ = 0)",
            )
        ax.set_xlabel(f"{fx} (%), {'higher' if dx == 'maximize' else 'lower'} is better")
        ax.set_ylabel(f"{fy} (%), {'higher' if dy == 'maximize' else 'lower'} is better")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"λ search of campaign {summary['campaign']} ({len(done)} trials)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_search_summary(study, fields: tuple, folder: Path, cfg: DictConfig) -> dict:
    """search/summary.{md,csv,png}, then .json (last: it marks a complete summary); the summary back,
    with the campaign's objective (what a sweeper of the campaign gets) as ``objective.value``."""
    rows = trial_rows(study, fields)
    best = best_trial(rows, fields)
    summary = {
        "campaign": str(cfg.name),
        "objectives": [list(f) for f in fields],
        "seeds": list(cfg.seeds),
        "trials": rows,
        "best": best,
        "pareto": pareto_front(rows, fields) if len(fields) > 1 else None,
        "objective": {"value": None if best is None else best[fields[0][0]], "best": best},
    }
    summary["markdown"] = markdown(summary)
    write_text(folder / "summary.md", summary["markdown"])
    write_text(folder / "summary.csv", csv_text(summary))
    if any(r["state"] == "complete" and not r["baseline"] for r in rows):
        plot(summary, folder / "summary.png")
    write_json(folder / "summary.json", {k: v for k, v in summary.items() if k != "markdown"})
    return summary


def link_from_campaign(out: Path, summary: dict) -> None:
    """The campaign's summary.md ends with a section pointing to the search (replaced on each call)."""
    path = out / "summary.md"
    text = path.read_text() if path.is_file() else f"# Campaign {summary['campaign']}\n"
    text = text.split(SECTION)[0].rstrip() + "\n\n" + SECTION + "\n## λ search\n\n"
    best = summary.get("best")
    text += f"{len(summary['trials'])} trials: [search/summary.md](search/summary.md) (figure: search/summary.png)"
    text += f"; best λ = {best['lam']:.4g}.\n" if best else ".\n"
    write_text(path, text)


def log_trial(cfg: DictConfig, number: int, params: dict, values: dict, folder: Path) -> None:
    """A W&B run for one trial, named by its λ, in the search's group (nothing without a W&B logger)."""
    wandb_cfg = (cfg.logger or {}).get("wandb")
    if wandb_cfg is None:
        return
    import wandb

    settings = OmegaConf.to_container(wandb_cfg, resolve=True)
    mode = wandb_mode(settings.get("offline"))
    if mode == "disabled":  # WANDB_MODE=disabled: nothing logged, nothing marked as logged
        return
    name = f"trial {number}: λ={params['lam']:.4g}" + (f", lr={params['lr']:.3g}" if "lr" in params else "")
    run = wandb.init(
        project=settings.get("project"), id=f"{settings.get('id')}-trial{number}", name=name,
        group=f"{cfg.run_group}-search", job_type="search-trial", dir=str(folder), resume="allow",
        mode=mode, config={"trial": number, **params}, settings=quiet_settings(mode),
    )  # fmt: skip
    run.log({f"search/{k}": v for k, v in values.items() if v is not None and math.isfinite(v)})
    for k, v in values.items():
        run.summary[f"search/{k}"] = v
    run.finish(exit_code=0)
