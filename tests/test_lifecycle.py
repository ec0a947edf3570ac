"""The run lifecycle end to end, as a scheduler and a user meet it: ``train.py`` subprocesses killed with
SIGKILL and SIGTERM and run again, a held folder, runs that diverge, multiruns re-run, offline W&B runs.

Every run is the tiny random-init ViT on the quickstart Digits task, four epochs of 21 steps (long enough
that a signal sent after the second checkpoint, at step 10, lands mid-training on a fast machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, compose_config, path_overrides
from wandb_offline import read_offline_runs

from orthoreg_pl import OrthoRegError
from orthoreg_pl.errors import RunFailed
from orthoreg_pl.runs.job import DIST_ENV
from orthoreg_pl.runs.lock import RunLock
from orthoreg_pl.runs.loggers import ResumableCSVLogger
from orthoreg_pl.task_vectors import load_task_vector
from orthoreg_pl.training.fit import train

RUN = [
    "experiment=quickstart",
    "dataset=digits",
    "mode=standard_ortho",
    "trainer.max_epochs=4",
    "trainer.enable_progress_bar=false",
    "callbacks.checkpoint.every_n_train_steps=5",
]


def env(cache: Path, tmp: Path) -> dict[str, str]:
    """A clean environment for a train.py subprocess: our caches, offline W&B, no scheduler or rendezvous
    variables of the machine the tests run on."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HYDRA_", "WANDB_", "ORTHOREG_", "SLURM_", "PL_")) and k not in DIST_ENV
    }
    return {
        **clean,
        "ORTHOREG_CACHE_DIR": str(cache),
        "ORTHOREG_DATA_ROOT": str(tmp / "data"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        **{
            k: str(tmp / "wandb_home" / k.lower())
            for k in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")
        },
    }


def start(args: list[str], cache: Path, tmp: Path, **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=PROJECT_ROOT,
        env={**env(cache, tmp), **extra_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def signal_after_checkpoints(targets: list[tuple[subprocess.Popen, Path, int]], checkpoints: int = 2) -> None:
    """Send each (process, root, signal) its signal once its ``last.ckpt`` has been written ``checkpoints``
    times (mid-epoch: every 5 steps); all watched at once, since the runs go side by side."""
    seen, last = [0] * len(targets), [None] * len(targets)
    deadline = time.time() + 240
    while time.time() < deadline and any(s < checkpoints for s in seen):
        for i, (proc, root, sig) in enumerate(targets):
            if seen[i] >= checkpoints:
                continue
            found = list(root.rglob("last.ckpt"))
            if found and (mtime := found[0].stat().st_mtime_ns) != last[i]:
                seen[i], last[i] = seen[i] + 1, mtime
            if seen[i] >= checkpoints or proc.poll() is not None:
                seen[i] = checkpoints
                proc.send_signal(sig)
        time.sleep(0.01)


def run_dir_of(root: Path) -> Path:
    (meta,) = root.rglob("meta.json")
    return meta.parent


def vector(root: Path) -> dict[str, torch.Tensor]:
    return load_task_vector(run_dir_of(root) / "task_vector.safetensors")


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, cache_dir):
    """An uninterrupted run, one SIGKILLed and one SIGTERMed mid-epoch (W&B offline), all started
    together; then the two interrupted ones re-run to the end. {name: (root, first rc, first output)}."""
    tmp = tmp_path_factory.mktemp("lifecycle")
    roots = {name: tmp / name for name in ("whole", "kill", "term")}
    loggers = {"whole": "logger=csv", "kill": "logger=csv", "term": "logger=wandb"}
    procs = {n: start([*RUN, loggers[n], f"paths.runs_dir={roots[n]}"], cache_dir, tmp) for n in roots}
    signal_after_checkpoints(
        [(procs["kill"], roots["kill"], signal.SIGKILL), (procs["term"], roots["term"], signal.SIGTERM)]
    )
    first = {n: (p.wait(timeout=300), p.stdout.read()) for n, p in procs.items()}
    states = {n: json.loads((run_dir_of(roots[n]) / "meta.json").read_text()) for n in ("kill", "term")}
    again = {
        n: start([*RUN, loggers[n], f"paths.runs_dir={roots[n]}"], cache_dir, tmp) for n in ("kill", "term")
    }
    second = {n: (p.wait(timeout=300), p.stdout.read()) for n, p in again.items()}
    return {"roots": roots, "first": first, "states": states, "second": second}


def test_sigkill_then_rerun_is_bit_identical(interrupted):
    rc, _ = interrupted["first"]["kill"]
    assert rc == -signal.SIGKILL
    assert interrupted["states"]["kill"]["status"] == "running"  # killed: nobody could say otherwise
    rc, output = interrupted["second"]["kill"]
    assert rc == 0 and "resuming" in output, output
    whole, resumed = vector(interrupted["roots"]["whole"]), vector(interrupted["roots"]["kill"])
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_sigterm_saves_checkpoint_exits_nonzero_and_resumes_identically(interrupted):
    rc, output = interrupted["first"]["term"]
    assert rc == 128 + signal.SIGTERM, output
    assert "interrupted: stopped by SIGTERM at step" in output and "Traceback" not in output
    state = interrupted["states"]["term"]
    assert state["status"] == "interrupted" and "SIGTERM" in state["status_reason"]
    rc, output = interrupted["second"]["term"]
    assert rc == 0, output
    whole, resumed = vector(interrupted["roots"]["whole"]), vector(interrupted["roots"]["term"])
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    meta = json.loads((run_dir_of(interrupted["roots"]["term"]) / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["steps"] == 84


def test_resumed_job_continues_its_own_wandb_run(interrupted):
    """Offline W&B: the interrupted job and its resumption are two offline runs with one id (synced into one
    run), the second continuing the steps; zero-shot and fine-tuned accuracy under their own keys."""
    run_dir = run_dir_of(interrupted["roots"]["term"])
    runs = read_offline_runs(run_dir)
    assert len(runs) == 2
    first, second = runs
    meta = json.loads((run_dir / "meta.json").read_text())
    assert first.run_id == second.run_id == f"train-{meta['identity']['hash']}"
    assert first.job_type == "train" and first.exit_code == 128 + signal.SIGTERM and second.exit_code == 0
    steps = [[r["trainer/global_step"] for r in run.history if "train/loss" in r] for run in runs]
    assert steps[0] and steps[1] and min(steps[1]) > max(steps[0]) - 5  # from the checkpoint on, not from 0
    for run in runs:
        assert run.config["config"]["dataset"]["name"] == "Digits"
        assert run.config["identity"]["hash"] == meta["identity"]["hash"]
    assert "zeroshot/val_acc" in first.summary and "finetuned/val_acc" in second.summary
    assert second.summary["finetuned/val_acc"] == pytest.approx(meta["accuracy"]["finetuned"]["val"])


def test_held_folder_is_refused_and_a_killed_holders_folder_taken_over(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    cfg = compose_config(
        [
            "experiment=quickstart",
            "dataset=digits",
            "logger=none",
            *path_overrides(tmp_path, cache_dir, run_dir),
        ]
    )
    with (
        RunLock(run_dir),
        pytest.raises(OrthoRegError, match=rf"in use by a live job \(pid {os.getpid()} on host"),
    ):
        train(cfg)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; from orthoreg_pl.runs.lock import RunLock\n"
         "with RunLock(sys.argv[1]): print('held', flush=True); time.sleep(600)", str(run_dir)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OrthoRegError, match=f"pid {holder.pid}"):
        RunLock(run_dir).__enter__()
    holder.kill()
    holder.wait()
    with RunLock(run_dir):  # the kernel dropped the dead holder's lock
        pass


def test_divergence_fails_the_run_without_a_task_vector(tmp_path, cache_dir):
    """lr=1e6: the loss turns non-finite; the run stops at once as failed, with the step and the cause."""
    run_dir = tmp_path / "run"
    cfg = compose_config(
        [
            "experiment=quickstart",
            "dataset=digits",
            "logger=none",
            "optim.lr=1e6",
            "trainer.max_steps=40",
            *path_overrides(tmp_path, cache_dir, run_dir),
        ]
    )
    with pytest.raises(RunFailed, match=r"non-finite loss at step \d+ .*likely cause: .*lr=1e\+06"):
        train(cfg)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "failed" and "non-finite loss" in meta["status_reason"]
    assert not (run_dir / "task_vector.safetensors").exists()


@pytest.mark.parametrize("lam", ["inf", "nan", "abc"])
def test_lambda_must_be_a_finite_number(lam, tmp_path, cache_dir):
    cfg = compose_config(
        [
            "experiment=quickstart",
            "dataset=digits",
            "mode=standard_ortho",
            f"ortho.lam={lam}",
            *path_overrides(tmp_path, cache_dir, tmp_path / "run"),
        ]
    )
    with pytest.raises(OrthoRegError, match=rf"ortho\.lam='?{lam}'?; expected a finite λ >= 0"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_multirun_skips_finished_and_resumes_only_unfinished(tmp_path, cache_dir):
    """-m over optim.lr: two folders, two W&B runs with distinct ids and the resolved config; re-run: both
    skipped; one status reset to running: only that one resumes. A failed point does not stop the sweep."""
    args = [
        "-m",
        "experiment=quickstart",
        "dataset=digits",
        "mode=standard",
        "logger=wandb",
        "wandb_task_vector_artifact=true",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.enable_progress_bar=false",
        f"paths.runs_dir={tmp_path}/runs",
    ]

    def run(extra=("optim.lr=0.001,0.002",), **extra_env):
        proc = start([*args, *extra], cache_dir, tmp_path, **extra_env)
        return proc.wait(timeout=300), proc.stdout.read()

    rc, output = run()
    assert rc == 0 and "multirun: 2 jobs: 2 finished, 0 skipped, 0 failed" in output, output
    metas = sorted((tmp_path / "runs").rglob("meta.json"))
    assert len(metas) == 2 and metas[0].parent != metas[1].parent
    wandb_runs = read_offline_runs(tmp_path / "runs")
    assert len({r.run_id for r in wandb_runs}) == 2 and all(r.exit_code == 0 for r in wandb_runs)
    assert sorted(r.config["config"]["optim"]["lr"] for r in wandb_runs) == [0.001, 0.002]
    assert len({r.group for r in wandb_runs}) == 1 and wandb_runs[0].group.startswith("train-")
    assert all(any(a.startswith("task_vector-") for a in r.artifacts) for r in wandb_runs)

    rc, output = run()
    assert rc == 0 and output.count("skipped:") == 2 and "2 jobs: 0 finished, 2 skipped" in output, output

    meta = json.loads(metas[0].read_text())
    meta["status"] = "running"
    metas[0].write_text(json.dumps(meta))
    rc, output = run(["optim.lr=0.001,0.002,-1"])  # checked before Hydra: no job starts
    assert rc == 2 and "error: optim.lr=-1; expected a number > 0 (in the job" in output, output
    assert "resuming" not in output and json.loads(metas[0].read_text())["status"] == "running"
    # a value no check saw beforehand (as a sweeper proposes it) fails its job only, not the sweep
    rc, output = run(["optim.lr=0.001,0.002,-1"], ORTHOREG_SKIP_PRECHECK="1")
    assert rc == 1 and "3 jobs: 1 finished, 1 skipped, 1 failed" in output, output
    assert output.count("resuming") >= 1 and str(metas[0].parent) in output
    assert "failed: " in output and "optim.lr=-1" in output


def test_csv_logger_appends_to_a_resumed_runs_history(tmp_path):
    for values in ([1.0, 2.0], [3.0]):
        logger = ResumableCSVLogger(save_dir=tmp_path, name="csv", version="")
        for step, v in enumerate(values):
            logger.log_metrics({"train/loss": v}, step=step)
        logger.save()
    lines = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,train/loss" and len(lines) == 4


def test_sigusr1_requeues_the_slurm_job(tmp_path, monkeypatch):
    """Under SLURM the pre-emption signal ends in ``scontrol requeue <job>`` (array jobs: <array>_<task>)."""
    from orthoreg_pl.runs.lifecycle import requeue_slurm_job

    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    requeue_slurm_job()
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    requeue_slurm_job()
    assert (tmp_path / "calls").read_text().splitlines() == ["requeue 123", "requeue 77_4"]


def test_a_requeued_job_counts_once_as_what_it_ended_as(tmp_path):
    """The outcome log keeps every attempt's line (a SLURM requeue: interrupted, then finished); the
    summary counts each job (its number and overrides) once, by its last line."""
    from orthoreg_pl.runs.outcomes import read_outcomes, summary_lines

    log = tmp_path / "outcomes.jsonl"
    lines = [
        {"job": 0, "overrides": ["ortho.lam=1"], "outcome": "interrupted", "message": "stopped by SIGTERM"},
        {"job": 1, "overrides": ["ortho.lam=10"], "outcome": "finished", "message": ""},
        {"job": 0, "overrides": ["ortho.lam=1"], "outcome": "finished", "message": ""},
        {"overrides": ["ortho.lam=100"], "outcome": "failed", "message": "diverged"},  # an older line
        {"overrides": ["ortho.lam=100"], "outcome": "failed", "message": "diverged"},
    ]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    outcomes = read_outcomes(log)
    assert [(o.get("job"), o["outcome"]) for o in outcomes] == [
        (0, "finished"),
        (1, "finished"),
        (None, "failed"),
        (None, "failed"),
    ]
    assert summary_lines(outcomes)[0] == "multirun: 4 jobs: 2 finished, 0 skipped, 2 failed"
    assert not any("interrupted" in line for line in summary_lines(outcomes))
