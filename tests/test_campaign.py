"""λ campaigns: the plan checked against the real configs, the quickstart campaign end to end (train,
merge, summary, W&B), a re-run that trains nothing, and an Optuna search whose study resumes.

The campaigns here are the quickstart campaign made small: two tasks, 6 optimizer steps per run and a
3-point α grid, so each finishes in about a minute on two cores.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONFIG_DIR, PROJECT_ROOT
from hydra import compose, initialize_config_dir
from test_lifecycle import env
from wandb_offline import read_offline_runs

from orthoreg_pl import OrthoRegError
from orthoreg_pl.campaign import make_plan
from orthoreg_pl.campaign.summary import COLUMNS
from orthoreg_pl.config.groups import check_experiment_kind

SMALL = [
    "experiment=campaign_quickstart",
    "datasets=[digits,shapes]",
    'overrides.train=["trainer.max_steps=6","trainer.enable_progress_bar=false"]',
    'overrides.merge=["protocol.alphas=[0,0.5,1]"]',
]
METRICS = [c for c in COLUMNS if c not in ("mode", "lam", "seed", "status")]
GRID = ["lambdas=[0.1,1]", "seeds=[0,1]"]  # 2 tasks × (2 λ + standard) × 2 seeds: 12 runs, 12 reports


def campaign(args: list[str], root: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orthoreg_pl.campaign", *args, f"paths.root_dir={root}"],
        cwd=PROJECT_ROOT,
        env=env(cache, root),
        capture_output=True,
        text=True,
        timeout=900,
    )


def plan_of(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("campaign", overrides=list(overrides))
        return make_plan(cfg)


# ---- the plan -----------------------------------------------------------------------------------


def test_plan_splits_modes_by_penalty_and_sweeps_protocols_together(tmp_path):
    plan = plan_of(*SMALL, f"paths.root_dir={tmp_path}", "launcher=joblib")
    assert plan.penalized == ("standard_ortho",) and plan.plain == ("standard",)
    assert plan.tasks == {"digits": "Digits", "shapes": "Shapes"}
    assert plan.protocols == ("addition", "negation")  # the control (Quadrants) is generated: present
    assert len(plan.points()) == 4 + 1
    penalized, plain = plan.train
    assert (
        "ortho.lam=0.1,1.0,3.0,10.0" in penalized.overrides and "mode=standard_ortho" in penalized.overrides
    )
    assert not any(o.startswith("ortho.lam") for o in plain.overrides)
    assert "dataset=digits,shapes" in penalized.overrides and "hydra/launcher=joblib" in penalized.overrides
    merge = plan.merge[0].overrides
    assert (
        "experiment=quickstart_clip_addition,quickstart_clip_negation" in merge
        and "tasks=[Digits,Shapes]" in merge
    )
    # the merges select exactly the runs the campaign trains: its training settings are named to them
    assert 'train_overrides=["trainer.max_steps=6","trainer.enable_progress_bar=false"]' in merge


def test_plan_leaves_out_negation_when_its_control_is_missing(tmp_path):
    plan = plan_of("experiment=campaign_vitb32", f"paths.data_root={tmp_path / 'nothing'}")
    assert plan.protocols == ("addition",)
    assert "ImageNet not found" in plan.skipped_protocols["negation"]
    assert all("experiment=addition_vitb32" in m.overrides for m in plan.merge)
    assert plan.arch == "ViT-B-32" and len(plan.tasks) == 8


@pytest.mark.parametrize(
    "override, message",
    [
        ("modes=[standrd]", "mode=standrd does not compose"),
        ("datasets=[digitz]", "dataset=digitz.* does not compose .*digitz"),
        ("lambdas=[-1]", "lambdas has -1"),
        ("lambdas=[abc]", "lambdas has 'abc'"),
        ("lambdas=[0.1,0.1]", "repeats a value"),
        ("seeds=[]", "seeds is empty"),
        ("experiments.addition=quickstart_negation", "runs protocol 'negation', not 'addition'"),
        (
            "experiments.addition=addition_vitb32",
            "merges ViT-B-32 task vectors, but experiments.train=quickstart_clip",
        ),
        ("launcher=slurmm", "launcher=slurmm and the campaign's overrides does not compose .*slurmm"),
        ('overrides.all=["optim.lrr=1"]', "the campaign's overrides does not compose"),
    ],
)
def test_plan_refuses_bad_input_before_launching_anything(tmp_path, override, message):
    with pytest.raises(OrthoRegError, match=message.replace("[", r"\[")):
        plan_of(*SMALL, f"paths.root_dir={tmp_path}", override)


@pytest.mark.parametrize(
    "kind, experiment, theirs",
    [
        ("train", "quickstart_addition", "merge"),
        ("merge", "quickstart", "train"),
        ("train", "campaign_vitb32", "campaign"),
    ],
)
def test_an_experiment_of_another_script_is_named_as_such(capsys, kind, experiment, theirs):
    with pytest.raises(SystemExit) as exit_info:
        check_experiment_kind(kind, [f"experiment={experiment}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"experiment={experiment} is a {theirs} experiment" in err and err.count("\n") == 1
    check_experiment_kind(theirs, [f"experiment={experiment}"])  # the right script accepts it


# ---- the quickstart campaign end to end ---------------------------------------------------------


@pytest.fixture(scope="module")
def ran(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("campaign")
    done = campaign([*SMALL, *GRID, "logger=wandb"], root, cache_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = root / "campaigns" / "quickstart"
    return root, folder, json.loads((folder / "summary.json").read_text()), done


def test_campaign_summary_has_a_row_per_mode_and_lambda_with_every_column(ran):
    root, folder, summary, _ = ran
    assert [(r["mode"], r["lam"], r["seed"]) for r in summary["rows"]] == [
        ("standard_ortho", 0.1, 0),
        ("standard_ortho", 0.1, 1),
        ("standard_ortho", 1.0, 0),
        ("standard_ortho", 1.0, 1),
        ("standard", 0.0, 0),
        ("standard", 0.0, 1),
    ]
    for row in summary["rows"]:
        assert row["status"] == "ok"
        assert all(isinstance(row[c], float) for c in METRICS), row
    with open(folder / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(COLUMNS) and len(table) == 6
    assert "| standard_ortho | 0.1 | 1 |" in (folder / "summary.md").read_text()
    assert len(list((root / "runs").rglob("task_vector.safetensors"))) == 2 * 6


def test_campaign_summary_holds_intervals_and_verdicts_that_follow_them(ran):
    """Per (mode, λ): the mean of the two seeds and its t interval; against standard, the paired
    difference seed by seed; the verdict's words follow the interval."""
    from orthoreg_pl.campaign.statistics import estimate, verdict

    _, folder, summary, _ = ran
    rows = {(r["mode"], r["lam"], r["seed"]): r for r in summary["rows"]}
    for point in summary["points"]:
        mode, lam = point["mode"], point["lam"]
        values = [rows[(mode, lam, s)]["objective"] for s in (0, 1)]
        interval = estimate(values)
        assert point["seeds"] == [0, 1] and point["metrics"]["objective"]["mean"] == pytest.approx(
            interval.mean
        )
        assert point["metrics"]["objective"]["half_width"] == pytest.approx(interval.half_width)
        if mode == "standard":
            assert point["reference"] is None and point["verdicts"] == {}
            continue
        diff = estimate(
            [rows[(mode, lam, s)]["objective"] - rows[("standard", 0.0, s)]["objective"] for s in (0, 1)]
        )
        assert point["differences"]["objective"]["mean"] == pytest.approx(diff.mean)
        assert point["verdicts"]["objective"] == verdict(diff, "maximize")
        assert ("not distinguishable" in point["verdicts"]["objective"]) == (not diff.excludes_zero())
        assert f"* {mode} λ={lam:g} against standard (2 seeds):" in (folder / "summary.md").read_text()
    with open(folder / "summary_intervals.csv") as f:
        intervals = list(csv.DictReader(f))
    assert [(r["mode"], r["lam"], r["seeds"]) for r in intervals] == [
        ("standard_ortho", "0.1", "2"),
        ("standard_ortho", "1.0", "2"),
        ("standard", "0.0", "2"),
    ]


def test_campaign_objective_is_the_value_in_the_matching_merge_report(ran):
    _, _, summary, _ = ran
    for row in summary["rows"]:
        report = json.loads((Path(row["reports"]["addition"]) / "report.json").read_text())
        assert (report["mode"], report["lam"]) == (row["mode"], row["lam"])
        assert row["objective"] == report["objective"]["value"] == row["addition_val_norm"]
        assert row["addition_test_norm"] == report["mean"]["norm"]
        negation = json.loads((Path(row["reports"]["negation"]) / "report.json").read_text())
        assert row["negation_target_test"] == negation["mean"]["target"]
        refs = report["references"]
        expected = sum(r["finetuned"]["test"] for r in refs.values()) / len(refs)
        assert row["single_finetuned_test"] == pytest.approx(expected)
    best = max(summary["points"], key=lambda p: p["metrics"]["objective"]["mean"])
    assert summary["objective"]["value"] == best["metrics"]["objective"]["mean"]  # the mean over the seeds
    assert summary["objective"]["best"] == {"mode": best["mode"], "lam": best["lam"], "seeds": [0, 1]}


def test_campaign_plot_and_wandb_run(ran):
    _, folder, summary, _ = ran
    png = (folder / "summary.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 1000 and height >= 700
    (run,) = [r for r in read_offline_runs(folder) if r.job_type == "campaign"]
    assert run.exit_code == 0 and run.group == "campaign-quickstart"
    assert run.summary["campaign/objective"] == pytest.approx(summary["objective"]["value"])
    logged = {key for row in run.history for key in row}
    assert {"campaign/summary", "campaign/summary_plot", "campaign/objective_vs_lambda_table"} <= logged
    assert f"campaign-{summary['identity']}" in run.artifacts


def test_every_job_of_the_campaign_is_a_named_wandb_run_of_its_group(ran):
    """One offline W&B run per training and merge job, all in the campaign's group, named by what they are."""
    root, _, summary, _ = ran
    jobs = read_offline_runs(root / "runs") + read_offline_runs(root / "reports")
    train = [r for r in jobs if r.job_type == "train"]
    merge = [r for r in jobs if r.job_type == "merge"]
    assert len(train) == 2 * 6 and len(merge) == 2 * 6 and {r.group for r in jobs} == {"campaign-quickstart"}
    assert len({r.run_id for r in jobs}) == len(jobs) and all(r.exit_code == 0 for r in jobs)
    names = sorted(r.name for r in train)
    assert "orthoreg-tiny-clip/standard_ortho_lam0.1/Digits/seed0" in names
    assert "orthoreg-tiny-clip/standard/Shapes/seed1" in names
    assert any(r.name.startswith("negation/orthoreg-tiny-clip/standard_ortho_lam1/") for r in merge)


def test_campaign_rerun_trains_and_merges_nothing(ran, cache_dir):
    root, folder, first, _ = ran
    metas = {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("meta.json")}
    offline = sorted(root.rglob("offline-run-*"))
    done = campaign([*SMALL, *GRID, "logger=wandb"], root, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((folder / "summary.json").read_text())
    assert all(s["jobs"]["finished"] == 0 and s["jobs"]["failed"] == 0 for s in again["stages"])
    assert sum(s["jobs"]["skipped"] for s in again["stages"]) == 12 + 12
    assert {p: p.stat().st_mtime_ns for p in metas} == metas
    assert [r["objective"] for r in again["rows"]] == [r["objective"] for r in first["rows"]]
    assert sorted(root.rglob("offline-run-*")) == offline  # nothing new to log: no second W&B folder


def test_campaign_with_a_failing_point_reports_it_and_exits_1(tmp_path, cache_dir):
    """λ so large that λ·penalty overflows: that row names the failure, the others are scored."""
    args = [
        *SMALL[:2],
        "lambdas=[1e39]",
        'overrides.train=["trainer.max_steps=3"]',
        "experiments.negation=null",
    ]
    args += ['overrides.merge=["protocol.alphas=[0,1]"]', "logger=none", "datasets=[digits]"]
    done = campaign(args, tmp_path, cache_dir)
    assert done.returncode == 1
    assert "error: campaign quickstart: 1 training and 1 merge job(s) failed" in done.stderr
    summary = json.loads((tmp_path / "campaigns" / "quickstart" / "summary.json").read_text())
    bad, good = summary["rows"]
    assert "non-finite loss" in bad["status"] and bad["objective"] is None
    assert good["mode"] == "standard" and good["status"] == "ok" and summary["objective"]["value"] is not None


# ---- the λ search (Optuna, ask and tell) ---------------------------------------------------------

SEARCH = [
    "experiment=campaign_quickstart",
    "datasets=[digits]",
    'overrides.train=["trainer.max_steps=4"]',
    'overrides.merge=["protocol.alphas=[0,0.5,1]"]',
    "logger=none",
]


def test_search_resumes_with_continuing_trial_numbers_and_one_baseline(tmp_path, cache_dir):
    """Two trials, then one more in a second call: the study keeps the baseline (λ = 0, once) and three
    trials numbered on; each trial's value is the objective of its own campaign point."""
    import optuna

    args = [*SEARCH, "search=optuna", "experiments.negation=null", "search.sampler=random"]
    for trials in (2, 1):
        done = campaign([*args, f"search.n_trials={trials}"], tmp_path, cache_dir)
        assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "campaigns" / "quickstart" / "search"
    study = optuna.load_study(study_name="quickstart-lambda", storage=f"sqlite:///{folder / 'study.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert [bool(t.user_attrs.get("baseline")) for t in study.trials] == [True, False, False, False]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for trial in study.trials[1:]:
        summary = json.loads((Path(trial.user_attrs["folder"]) / "summary.json").read_text())
        (point,) = summary["points"]
        assert point["mode"] == "standard_ortho" and point["lam"] == pytest.approx(trial.params["lam"])
        assert trial.value == pytest.approx(point["metrics"]["objective"]["mean"])
    assert len({t.params["lam"] for t in study.trials[1:]}) == 3
    search = json.loads((folder / "summary.json").read_text())
    assert [r["trial"] for r in search["trials"]] == [0, 1, 2, 3] and search["best"]["trial"] in (1, 2, 3)
    assert (folder / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    top = (tmp_path / "campaigns" / "quickstart" / "summary.md").read_text()
    assert "[search/summary.md](search/summary.md)" in top and "4 trials" in top


def test_two_objective_search_reports_a_front_of_non_dominated_trials(tmp_path, cache_dir):
    done = campaign(
        [*SEARCH, "search=optuna_pareto", "search.n_trials=3", "search.sampler=random"], tmp_path, cache_dir
    )
    assert done.returncode == 0, done.stderr[-3000:]
    search = json.loads((tmp_path / "campaigns" / "quickstart" / "search" / "summary.json").read_text())
    rows = {r["trial"]: r for r in search["trials"] if r["state"] == "complete"}
    assert len(rows) == 4 and search["pareto"]  # the baseline and three trials

    def dominates(a, b):
        up, down = (
            a["addition_val_norm"] - b["addition_val_norm"],
            b["negation_target_val"] - a["negation_target_val"],
        )
        return up >= 0 and down >= 0 and (up > 0 or down > 0)

    for n in search["pareto"]:
        assert not any(dominates(rows[m], rows[n]) for m in rows if m != n)
    for n in set(rows) - set(search["pareto"]):
        assert any(dominates(rows[m], rows[n]) for m in rows if m != n)


def test_the_sweeps_extra_installs_cleanly_without_pins_on_sqlalchemy():
    """pip check passes, and the project pins no SQLAlchemy (Optuna >= 4 runs on SQLAlchemy 2)."""
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sqlalchemy" not in (PROJECT_ROOT / "pyproject.toml").read_text().lower()


@pytest.mark.parametrize("sweep", sorted((PROJECT_ROOT / "sweeps").glob("wandb_*.yaml")))
def test_wandb_sweep_runs_one_campaign_point_and_maximises_the_merged_objective(sweep, tmp_path):
    """A W&B agent runs the sweep's command with the proposed parameters (``key=value``): that is a
    campaign of one point, which logs the metric the sweep maximises."""
    import yaml

    spec = yaml.safe_load(sweep.read_text())
    assert spec["metric"] == {"name": "campaign/objective", "goal": "maximize"}
    command = spec["command"]
    assert (
        command[1:4] == [".venv/bin/python", "-m", "orthoreg_pl.campaign"]
        and command[-1] == "${args_no_hyphens}"
    )
    proposed = {name: 0.5 * (p["min"] + p["max"]) for name, p in spec["parameters"].items()}
    args = [a for a in command[4:-1] if a != "launcher=slurm"]  # no cluster here
    plan = plan_of(*args, *(f"{k}={v!r}" for k, v in proposed.items()), f"paths.root_dir={tmp_path}")
    assert plan.penalized == ("standard_ortho",) and plan.plain == ()
    assert plan.lambdas == (proposed["lam"],) and plan.protocols == ("addition",)
    if "lr" in proposed:
        assert f"optim.lr={proposed['lr']!r}" in plan.train[0].overrides
