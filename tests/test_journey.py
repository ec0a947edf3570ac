"""A newcomer's journey: stray runs never make a documented merge ambiguous, Ctrl-C stops a run, a
multirun and a campaign cleanly (interrupted, exit 130, nothing left running, a re-run finishes), the
sweep's progress line, and the end of the journey (key numbers, where everything is, what next)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import (
    MERGE_RUN_OVERRIDES,
    MERGE_SELECT,
    MERGE_TASKS,
    PROJECT_ROOT,
    compose_config,
    path_overrides,
)
from omegaconf import open_dict
from test_lifecycle import env

from orthoreg_pl import OrthoRegError
from orthoreg_pl.evaluation.pipeline import run_merge
from orthoreg_pl.report.summary import journey_end
from orthoreg_pl.report.tables import collect_runs, distinguishing
from orthoreg_pl.runs.folder import read_meta
from orthoreg_pl.runs.outcomes import LOG_ENV
from orthoreg_pl.runs.progress import ProgressLine, clear_progress, report_progress
from orthoreg_pl.task_vectors import load_task_vector
from orthoreg_pl.training.fit import train

# ---- stray runs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def with_stray_runs(merge_runs, cache_dir, tmp_path_factory) -> Path:
    """merge_runs (3 steps each) and, beside them, a 2-step run of each task: what a small experiment in
    the same place leaves (`train.py ... trainer.max_steps=2`)."""
    tmp = tmp_path_factory.mktemp("stray")
    shutil.copytree(merge_runs / "runs", tmp / "runs")
    for task in MERGE_TASKS:
        overrides = [*MERGE_RUN_OVERRIDES, f"dataset={task.lower()}", "trainer.max_steps=2"]
        train(compose_config([*overrides, *path_overrides(tmp, cache_dir, output_dir=tmp / "stray" / task)]))
    shutil.move(tmp / "stray", tmp / "runs" / "stray")
    return tmp


def merge_cfg(root: Path, cache_dir: Path, out: Path, *extra: str):
    cfg = compose_config(
        [
            "experiment=quickstart_addition", "mode=standard_ortho", f"tasks=[{','.join(MERGE_TASKS)}]",
            "protocol.alphas=[0.0,1.0]", *path_overrides(root, cache_dir, output_dir=out), *extra,
        ],
        config_name="merge",
    )  # fmt: skip
    with open_dict(cfg):
        cfg.merge_method_name = "task_arithmetic"
    return cfg


def test_a_stray_run_never_makes_the_merge_ambiguous(with_stray_runs, merge_runs, cache_dir, tmp_path):
    """The merge selects exactly the runs its experiment and train_overrides give, whatever else lies in
    the folder; the 2-step runs, named, are selected just as exactly."""
    report = run_merge(merge_cfg(with_stray_runs, cache_dir, tmp_path / "a", MERGE_SELECT))
    wanted = {read_meta(merge_runs / "runs" / t)["identity"]["hash"] for t in MERGE_TASKS}
    assert {i["identity"] for i in report["inputs"].values()} == wanted
    stray = 'train_overrides=["trainer.max_steps=2","trainer.limit_val_batches=1"]'
    other = run_merge(merge_cfg(with_stray_runs, cache_dir, tmp_path / "b", stray))
    assert all("/stray/" in i["path"] for i in other["inputs"].values())
    assert other["identity"]["hash"] != report["identity"]["hash"]  # another report, in another folder


def test_no_matching_run_offers_a_command_that_works_as_written(with_stray_runs, cache_dir, tmp_path):
    """Without the training settings the runs had, the error names the closest runs' settings and a
    merge.py command with them; that command, pasted into bash, merges."""
    cfg = merge_cfg(with_stray_runs, cache_dir, tmp_path / "r")
    with pytest.raises(OrthoRegError) as error:
        run_merge(cfg)
    message = str(error.value)
    assert message.startswith("no finished run for task Digits") and "trainer.max_steps" in message
    command = message.split("To merge those: ")[1]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "merge.py"] and any(a.startswith("train_overrides=[") for a in argv)
    done = subprocess.run(
        [sys.executable, *argv[1:], "logger=none"],
        cwd=PROJECT_ROOT, env=env(cache_dir, tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = next(
        a.split("=", 1)[1] for a in argv if a.startswith("paths.output_dir=")
    )  # as the test composed it
    report = json.loads((Path(out) / "report.json").read_text())
    steps = report["identity"]["selected_by"]["trainer.max_steps"]  # the closest runs' (2 or 3 steps)
    assert steps in (2, 3) and all(
        ("/stray/" in i["path"]) == (steps == 2) for i in report["inputs"].values()
    )


def test_report_shows_one_row_per_identity_with_what_differs(with_stray_runs):
    metas = collect_runs(with_stray_runs / "runs")
    assert len(metas) == 4
    labels = distinguishing(metas, lambda m: (m["task"], m["mode"], m["ortho"]["lam"], m["seed"]))
    assert sorted(labels) == ["trainer.max_steps=2"] * 2 + ["trainer.max_steps=3"] * 2


# ---- Ctrl-C -------------------------------------------------------------------------------------------

LONG_RUN = [  # long enough to be interrupted mid-training: 4 epochs of Digits, a checkpoint every 5 steps
    "experiment=quickstart",
    "mode=standard_ortho",
    "logger=none",
    "trainer.max_epochs=4",
    "callbacks.checkpoint.every_n_train_steps=5",
]


def popen(argv: list[str], cache: Path, tmp: Path) -> subprocess.Popen:
    """A process of its own group (as a terminal's foreground job): os.killpg is Ctrl-C."""
    return subprocess.Popen(
        [sys.executable, *argv], cwd=PROJECT_ROOT, env=env(cache, tmp), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def ctrl_c_once_training(
    proc: subprocess.Popen, root: Path, checkpoints: int = 1, group: bool = True, signum: int = signal.SIGINT
) -> None:
    """SIGINT (or ``signum``) once a run below ``root`` has written ``last.ckpt`` (it is then mid-training)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(root.rglob("last.ckpt")):
            break
        time.sleep(0.05)
    if group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)


def leftovers(root: Path) -> list[str]:
    """Processes still running that work below ``root``."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if str(root) in cmdline:
            found.append(cmdline)
    return found


def vectors(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.parent.name: load_task_vector(p) for p in sorted(root.rglob("task_vector.safetensors"))}


def test_ctrl_c_in_a_run_saves_stops_with_130_and_the_rerun_finishes(tmp_path, cache_dir):
    runs = tmp_path / "runs"
    argv = ["train.py", *LONG_RUN, "dataset=digits", f"paths.runs_dir={runs}"]
    proc = popen(argv, cache_dir, tmp_path)
    ctrl_c_once_training(proc, runs)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted: stopped by SIGINT at step" in output and "Traceback" not in output
    (meta,) = runs.rglob("meta.json")
    assert json.loads(meta.read_text())["status"] == "interrupted" and not leftovers(tmp_path)
    again = popen(argv, cache_dir, tmp_path)
    output = again.communicate(timeout=300)[0]
    assert again.returncode == 0 and "resuming" in output, output[-3000:]
    assert json.loads(meta.read_text())["status"] == "finished"


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_ctrl_c_in_a_multirun_stops_every_job_and_starts_no_other(launcher, tmp_path, cache_dir):
    """Ctrl-C to the sweep's process group: the running job(s) save and stop as interrupted, the others
    are not run, the summary says so, the exit status is 130, nothing is left running; a re-run resumes
    the interrupted and runs the rest."""
    runs = tmp_path / "runs"
    argv = ["train.py", "-m", *LONG_RUN, "dataset=digits,shapes,colors", f"paths.runs_dir={runs}"]
    argv += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    proc = popen(argv, cache_dir, tmp_path)
    ctrl_c_once_training(proc, runs)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    summary = next(line for line in output.splitlines() if line.startswith("multirun: 3 jobs"))
    assert "interrupted" in summary and "0 failed" in summary, summary
    statuses = sorted(json.loads(m.read_text())["status"] for m in runs.rglob("meta.json"))
    assert "interrupted" in statuses and "running" not in statuses and "failed" not in statuses
    assert not leftovers(tmp_path)
    again = popen(argv, cache_dir, tmp_path)
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output[-3000:]
    assert sorted(json.loads(m.read_text())["status"] for m in runs.rglob("meta.json")) == ["finished"] * 3


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_in_a_campaign_stops_its_children_and_the_rerun_completes(tmp_path, cache_dir, signum):
    """Ctrl-C (or a SIGTERM, as `kill` sends) reaches the campaign alone (its multiruns run in process
    groups of their own): it hands the signal on, waits for the jobs to save, and ends with one line and
    128 + the signal; nothing is left running (a SIGTERM once left the child training under pid 1)."""
    args = [
        "-m", "orthoreg_pl.campaign", "experiment=campaign_quickstart", "datasets=[digits]", "lambdas=[1.0]",
        "modes=[standard_ortho]", 'overrides.train=["trainer.max_epochs=2","callbacks.checkpoint.every_n_train_steps=5"]',
        'overrides.merge=["protocol.alphas=[0,1]"]', "experiments.negation=null", "logger=none",
        f"paths.root_dir={tmp_path}",
    ]  # fmt: skip
    proc = popen(args, cache_dir, tmp_path)
    ctrl_c_once_training(proc, tmp_path / "runs", group=False, signum=signum)  # to the campaign alone
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signum, output[-3000:]
    interrupted = [line for line in output.splitlines() if line.startswith("interrupted: campaign")]
    assert len(interrupted) == 1 and "Traceback" not in output, output[-3000:]
    (meta,) = (tmp_path / "runs").rglob("meta.json")
    assert json.loads(meta.read_text())["status"] == "interrupted" and not leftovers(tmp_path)
    again = popen(args, cache_dir, tmp_path)
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output[-3000:]
    assert json.loads(meta.read_text())["status"] == "finished"


# ---- the progress line and the end ----------------------------------------------------------------


def test_progress_line_counts_jobs_and_shows_the_running_step(tmp_path, monkeypatch):
    log = tmp_path / "sweep.jsonl"
    log.write_text(
        json.dumps({"overrides": ["dataset=digits"], "outcome": "finished", "seconds": 20.0}) + "\n"
    )
    monkeypatch.setenv(LOG_ENV, str(log))
    report_progress("dataset=shapes mode=standard", 10, 40, force=True)
    text, key = ProgressLine("train", total=4).text()
    assert text.startswith("train 1/4 · dataset=shapes mode=standard: step 10/40 · job ETA")
    assert "sweep ETA" in text and key == (1, ("dataset=shapes mode=standard",))
    clear_progress()
    assert ProgressLine("train", total=4).text()[1] == (1, ())


def test_journey_end_names_the_key_numbers_the_folders_and_the_next_command(tmp_path):
    reports = [
        {"protocol": "addition", "mode": "standard", "lam": 0.0, "per_task": {"A": {}, "B": {}},
         "mean": {"norm": 0.903}, "chosen_alpha": 0.7, "config": {"paths": {"output_dir": "r/a"}}},
        {"protocol": "negation", "mode": "standard_ortho", "lam": 1.0, "per_task": {"A": {}, "B": {}},
         "control": "Quadrants", "mean": {"target": 0.2925, "control": 0.516}, "config": {"paths": {"output_dir": "r/n"}}},
    ]  # fmt: skip
    (tmp_path / "wandb" / "offline-run-20261206_000000-abc").mkdir(parents=True)
    text = journey_end([tmp_path], reports, "make campaign")
    assert "standard 90.30 % (α*=0.7)" in text and "standard_ortho λ=1 29.25 / 51.60 %" in text
    assert "W&B: 1 offline runs" in text and "-exec .venv/bin/wandb sync {} +" in text
    assert text.splitlines()[-2] == "Next: make campaign"


# ---- the make targets ---------------------------------------------------------------------------------


def make_commands(target: str, *variables: str) -> list[list[str]]:
    """The python command lines ``make -n <target>`` would run, split as bash splits them."""
    done = subprocess.run(
        ["make", "-n", target, *variables], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(".venv/bin/python ")]
    return [shlex.split(line)[1:] for line in lines if " -c " not in line and " pip " not in line]


@pytest.mark.parametrize(
    "variables", [(), ("SIZE=small",), ("SIZE=small", "ARGS=trainer.max_steps=5 optim.lr=1e-4")]
)
def test_every_command_of_the_make_targets_is_accepted(variables, tmp_path, capsys):
    """`make quickstart` and `make campaign`, full and small, with ARGS: each train.py and merge.py line
    passes the command-line check, the campaign's plan composes every job (the small analysis once
    named ξ pairs of the full size)."""
    from test_campaign import plan_of

    from orthoreg_pl.cli.precheck import precheck

    commands = make_commands("quickstart", *variables)
    assert [c[0] for c in commands] == ["train.py", "merge.py", "merge.py", "-m"]
    for script, *args in commands[:-1]:
        try:
            precheck(script.removesuffix(".py"), args)
        except SystemExit as done:
            pytest.fail(f"{script} {shlex.join(args)}: exit {done.code}\n{capsys.readouterr().err}")
    ((_, module, *args),) = make_commands("campaign", *variables)
    assert module == "orthoreg_pl.campaign"
    plan = plan_of(*args, f"paths.root_dir={tmp_path}")
    assert len(plan.tasks) == (2 if "SIZE=small" in variables else 4)
