"""A λ search on Optuna, ask and tell: each trial is a campaign of one λ (every task trained at it with
the campaign's penalised modes and seeds, then merged), scored by the campaign's merged objective,
its mean over the seeds.

The study is an SQLite file under ``campaigns/<name>/search/``: running the same command again
continues it, ``n_trials`` more, with trial numbers going on. Its first trial is the baseline: the
modes without the penalty (λ = 0), evaluated once. ``objectives: pareto`` searches two objectives at
once, addition's validation Norm.Acc (up) and negation's validation target accuracy (down), and
reports the Pareto front. The study-wide summary (``search/summary.{md,csv,png}``: the objective
against λ with the baseline, and the history; or the front) is linked from the campaign's summary.md.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from orthoreg_pl.campaign.grid import failures, run_grid
from orthoreg_pl.campaign.plan import make_plan
from orthoreg_pl.campaign.search_report import link_from_campaign, log_trial, write_search_summary
from orthoreg_pl.errors import OrthoRegError

log = logging.getLogger(__name__)
STUDY_FILE = "study.db"
PARETO = (("addition_val_norm", "maximize"), ("negation_target_val", "minimize"))


def objectives(cfg: DictConfig) -> tuple[tuple[str, str], ...]:
    """(row field, direction) of each objective the study optimises."""
    kind = str(cfg.search.objectives)
    if kind == "single":
        return (("objective", str(cfg.objective.direction)),)
    if kind == "pareto":
        return PARETO
    raise OrthoRegError(f"search.objectives={kind!r}; expected single or pareto")


def _distribution(spec: DictConfig | None, key: str):
    import optuna

    if spec is None:
        return None
    low, high, log_scale = float(spec.low), float(spec.high), bool(spec.get("log", True))
    if not (0 < low < high) or not all(map(math.isfinite, (low, high))):
        raise OrthoRegError(f"search.{key}={OmegaConf.to_container(spec)}; expected 0 < low < high (finite)")
    return optuna.distributions.FloatDistribution(low, high, log=log_scale)


def study_settings(cfg: DictConfig, fields: tuple) -> dict:
    """What a study is: a resumed study must have been made with the same (the grid's λ aside)."""
    keys = ("datasets", "modes", "seeds", "experiments", "overrides")
    settings = {
        k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
        for k in keys
    }
    space = {
        k: OmegaConf.to_container(cfg.search[k], resolve=True) for k in ("lam", "lr") if cfg.search.get(k)
    }
    return {**settings, "space": space, "objectives": [list(f) for f in fields]}


def _point_cfg(cfg: DictConfig, modes: list[str], lam: float | None, lr: float | None) -> DictConfig:
    point = copy.deepcopy(cfg)
    with open_dict(point):
        point.modes = modes
        point.lam = lam
        if lr is not None:
            point.lr = lr
    return point


def _values(summary: dict, fields: tuple) -> list[float] | None:
    """The trial's value per objective: the mean over its seeds (None when a value is missing)."""
    (point,) = [p for p in summary["points"]]  # a trial is a campaign of one point
    values = [(point["metrics"].get(field) or {}).get("mean") for field, _ in fields]
    return None if any(v is None or not math.isfinite(v) for v in values) else values


def run_search(cfg: DictConfig) -> dict:
    """Run ``search.n_trials`` trials (and the baseline, once); see the module docstring."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are logged here, one line each
    fields = objectives(cfg)
    out = Path(cfg.paths.output_dir)
    folder = out / "search"
    folder.mkdir(parents=True, exist_ok=True)
    space = {"lam": _distribution(cfg.search.lam, "lam")}
    if cfg.search.get("lr"):
        space["lr"] = _distribution(cfg.search.lr, "lr")
    plan = make_plan(_point_cfg(cfg, list(cfg.modes), float(cfg.search.lam.low), None))  # checks the grid
    if not plan.penalized:
        raise OrthoRegError(f"modes={list(cfg.modes)} has no penalised mode: there is no λ to search")
    settings = study_settings(cfg, fields)
    study = optuna.create_study(
        study_name=f"{cfg.name}-lambda",
        storage=f"sqlite:///{folder / STUDY_FILE}",
        load_if_exists=True,
        directions=[direction for _, direction in fields],
    )
    study.sampler = _sampler(cfg, len(study.trials))
    if study.user_attrs.get("settings", settings) != settings:
        raise OrthoRegError(
            f"{folder / STUDY_FILE} holds a study of other settings ({study.user_attrs['settings']}); "
            f"choose another name=... for this search, or delete {folder} to start over"
        )
    study.set_user_attr("settings", settings)
    if cfg.search.baseline and plan.plain and not any(t.user_attrs.get("baseline") for t in study.trials):
        _baseline(cfg, study, plan.plain, fields, folder)
    for _ in range(int(cfg.search.n_trials)):
        _trial(cfg, study, space, plan.penalized, fields, folder)
    summary = write_search_summary(study, fields, folder, cfg)
    link_from_campaign(out, summary)
    print(summary["markdown"], flush=True)
    return summary


def _sampler(cfg: DictConfig, trials_before: int):
    """The sampler, seeded by ``search.seed`` and how far the study has come (so a resumed call does
    not propose the first call's λ again)."""
    import optuna

    seed = None if cfg.search.seed is None else int(cfg.search.seed) + trials_before
    kind = str(cfg.search.sampler)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise OrthoRegError(f"search.sampler={kind!r}; expected tpe or random")


def _baseline(cfg: DictConfig, study, plain: tuple, fields: tuple, folder: Path) -> None:
    """The modes without the penalty, once: the study's reference value (a trial without parameters)."""
    import optuna

    out = folder / "baseline"
    plan = make_plan(_point_cfg(cfg, list(plain), None, None))
    summary, stages = run_grid(plan, cfg.objective, out, f"campaign {cfg.name} · search baseline (λ = 0)")
    values = _values(summary, fields)
    state = optuna.trial.TrialState.COMPLETE if values is not None else optuna.trial.TrialState.FAIL
    study.add_trial(
        optuna.trial.create_trial(
            state=state, values=values, params={}, distributions={},
            user_attrs={"baseline": True, "lam": 0.0, "modes": list(plain), "folder": str(out)},
        )
    )  # fmt: skip
    log.info("search: baseline (λ = 0, %s): %s", ", ".join(plain), values)
    error = failures(plan, stages, out)
    if error is not None:
        log.warning("search: the baseline had failed jobs: %s", error)


def _trial(cfg: DictConfig, study, space: dict, penalized: tuple, fields: tuple, folder: Path) -> None:
    import optuna

    trial = study.ask(space)
    lam, lr = trial.params["lam"], trial.params.get("lr")
    out = folder / f"trial-{trial.number:03d}"
    trial.set_user_attr("folder", str(out))
    plan = make_plan(_point_cfg(cfg, list(penalized), lam, lr))
    try:
        summary, stages = run_grid(
            plan, cfg.objective, out, f"campaign {cfg.name} · trial {trial.number} (λ={lam:.3g})"
        )
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # interrupted: the next call asks anew
        raise
    values = _values(summary, fields)
    if values is None or failures(plan, stages, out) is not None:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        log.warning("search: trial %d (λ=%.4g) failed: %s", trial.number, lam, failures(plan, stages, out))
        return
    study.tell(trial, values)
    log.info(
        "search: trial %d, λ=%.4g: %s",
        trial.number,
        lam,
        ", ".join(f"{f}={v:.4f}" for (f, _), v in zip(fields, values)),
    )
    log_trial(cfg, trial.number, trial.params, dict(zip([f for f, _ in fields], values)), out)
