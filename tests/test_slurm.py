"""SLURM for real: a single-node cluster from Debian's slurm-wlm and munge (tests/slurm_cluster.py), started
for this module and stopped at its end, runs the tiny quickstart model on the CPU.

* ``train.py -m hydra/launcher=slurm`` over two λ is a 2-job submitit array. Job 0 is pre-empted with
  submitit's signal (``scancel --signal=USR2``): it saves, submitit requeues it, it resumes. Job 1 is
  requeued from outside (``scontrol requeue``, SIGTERM): it saves, SLURM requeues it, it resumes and
  counts once. Both task vectors equal (``torch.equal``) those of the same runs without SLURM.
* ``sweeps/slurm_train.sbatch`` twice: one job gets SIGUSR1 in its batch shell (``scancel --batch``, as
  ``--signal=B:USR1@90`` sends it), which passes it on to the step; the other gets it in the step
  (``--signal=USR1@90``). Both save, requeue themselves, resume and end bit-identical.
* A job sbatch refuses (a GPU on this CPU-only node, an unknown partition) is one line before anything
  is written; a reduced campaign through ``launcher=slurm`` trains, merges and summarises.

Without the packages the module is skipped with the reason; under ``.ci/run``
(``ORTHOREG_SLURM_TESTS=required``) it fails instead. A cluster that is installed but does not start fails.
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
from conftest import PROJECT_ROOT, compose_config
from slurm_cluster import REQUIRED_ENV, SlurmCluster, start_cluster, unavailable

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.task_vectors import load_task_vector

submitit = pytest.importorskip("submitit")
PREEMPT = signal.Signals(submitit.JobEnvironment._usr_sig()).name  # submitit's pre-emption signal: SIGUSR2

# The tiny quickstart run: 60 optimizer steps, a checkpoint every 4, so that a signal sent once the first
# checkpoint is written lands mid-training.
RUN = [
    "experiment=quickstart",
    "dataset=digits",
    "mode=standard_ortho",
    "trainer.max_steps=60",
    "callbacks.checkpoint.every_n_train_steps=4",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
    "eval_zeroshot=false",
    "logger=none",
]
LAMBDAS = ("0.1", "1")  # job 0, job 1 of a multirun over ortho.lam=0.1,1
WAIT_S = 420  # the longest any fixture waits for its jobs


def say(request, line: str) -> None:
    """A line on the terminal even while pytest captures output (a CI log shows what ran)."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    report = request.config.pluginmanager.get_plugin("terminalreporter")
    if report is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            report.write_line(line)


@pytest.fixture(scope="module")
def cluster(request) -> SlurmCluster:
    """The cluster for this module; what it ran is printed, so a CI log shows the real cluster was used."""
    reason = unavailable()
    if reason:
        if os.environ.get(REQUIRED_ENV) == "required":
            pytest.fail(f"SLURM tests required ({REQUIRED_ENV}=required) but {reason}")
        pytest.skip(f"no SLURM test cluster: {reason}")
    started = start_cluster()
    version = started.run("sinfo", "--version").stdout.strip()
    say(request, f"\nSLURM test cluster up: {version}, node {started.node} ({started.cpus} CPUs)")
    yield started
    ran = started.ran()
    started.stop()
    say(request, f"\nSLURM test cluster stopped: {ran}")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm")


def job_env(cluster: SlurmCluster, work: Path, cache: Path) -> dict[str, str]:
    """The cluster's client environment (SLURM_CONF), our caches, one torch thread per job; none of the
    test machine's own Hydra, W&B, orthoreg or SLURM settings."""
    clean = {
        k: v
        for k, v in cluster.env.items()
        if not k.startswith(("HYDRA_", "WANDB_", "ORTHOREG_", "SUBMITIT_", "PL_"))
    }
    return {**clean, "ORTHOREG_CACHE_DIR": str(cache), "ORTHOREG_DATA_ROOT": str(work / "data"),
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip


def run_dir(runs: Path, lam: str) -> Path | None:
    found = list(runs.glob(f"*/standard_ortho_lam{lam}/Digits/*/meta.json"))
    return found[0].parent if found else None


def vector(runs: Path, lam: str) -> dict[str, torch.Tensor]:
    return load_task_vector(run_dir(runs, lam) / "task_vector.safetensors")


def assert_equal_vectors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def wait_for_checkpoints(runs: Path, lams: tuple[str, ...], proc: subprocess.Popen | None = None) -> None:
    """Until each λ's run has written its first ``last.ckpt`` (the fixture fails if one never does)."""
    deadline = time.time() + WAIT_S
    while time.time() < deadline and (proc is None or proc.poll() is None):
        if all((d := run_dir(runs, lam)) is not None and (d / "last.ckpt").exists() for lam in lams):
            return
        time.sleep(0.05)
    output = proc.communicate()[0] if proc is not None and proc.poll() is not None else ""
    pytest.fail(f"no first checkpoint under {runs} for λ {lams}: {output[-3000:]}")


def slurm_log(folder: Path, pattern: str) -> str:
    return "".join(f.read_text(errors="replace") for f in sorted(folder.glob(pattern)))


@pytest.fixture(scope="module")
def references(cluster, work, cache_dir) -> Path:
    """The same two runs without SLURM (basic launcher, one process), for the bit-for-bit comparisons."""
    runs = work / "reference"
    done = subprocess.run(
        [sys.executable, "train.py", "-m", *RUN, f"ortho.lam={','.join(LAMBDAS)}", f"paths.runs_dir={runs}"],
        cwd=PROJECT_ROOT, env=job_env(cluster, work, cache_dir), capture_output=True, text=True, timeout=WAIT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return runs


# ---- a submitit array: pre-emption and an external requeue ----------------------------------------


@pytest.fixture(scope="module")
def sweep(cluster, work, cache_dir, references) -> dict:
    """``train.py -m hydra/launcher=slurm`` over two λ: once both runs have a checkpoint, job 0 gets
    submitit's pre-emption signal and job 1 ``scontrol requeue``; then the multirun is waited for."""
    runs = work / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "train.py", "-m", "hydra/launcher=slurm", *RUN, f"ortho.lam={','.join(LAMBDAS)}",
         f"paths.runs_dir={runs}"],
        cwd=PROJECT_ROOT, env=job_env(cluster, work, cache_dir),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_checkpoints(runs, LAMBDAS, proc)
        (array,) = {p.name.split("_")[0] for p in (runs / ".submitit").glob("*_*") if p.name[0].isdigit()}
        cluster.run("scancel", f"--signal={PREEMPT[3:]}", f"{array}_0")
        cluster.run("scontrol", "requeue", f"{array}_1")
        output = proc.communicate(timeout=WAIT_S)[0]
    finally:
        if proc.poll() is None:  # the fixture failed: the multirun would wait for its jobs for ever
            proc.kill()
            proc.wait()
    submitit_dir = runs / ".submitit"
    return {
        "rc": proc.returncode,
        "output": output,
        "runs": runs,
        "array": array,
        "logs": [slurm_log(submitit_dir / f"{array}_{i}", f"{array}_{i}_0_log.*") for i in (0, 1)],
        "script": (submitit_dir / array / f"{array}_submission.sh").read_text(),
        "outcome_log": next((runs / ".multirun").glob("*.jsonl")).read_text().splitlines(),
    }


def test_a_two_job_multirun_runs_as_a_submitit_array(sweep):
    assert sweep["rc"] == 0, sweep["output"][-4000:]
    assert "multirun: 2 jobs: 2 finished, 0 skipped, 0 failed" in sweep["output"], sweep["output"][-4000:]
    assert "interrupted" not in sweep["output"].split("multirun: 2 jobs:")[1]
    script = sweep["script"]  # the launcher asked for what the CPU run uses: no GPU, one task, one CPU
    assert "#SBATCH --array=0-1%2" in script and "#SBATCH --gpus-per-node" not in script
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --cpus-per-task=1" in script
    for i, log in enumerate(sweep["logs"]):
        assert f"job_id={sweep['array']}_{i}" in log, log[-3000:]


def test_preemption_saves_requeues_and_resumes_bit_identically(sweep, references):
    log = sweep["logs"][0]
    assert f"{PREEMPT} at step" in log and "handing the signal to submitit to requeue this job" in log, log[
        -4000:
    ]
    assert "restart 0" in log and "restart 1" in log  # SLURM ran the same job twice
    assert "resuming from" in log
    assert_equal_vectors(vector(sweep["runs"], LAMBDAS[0]), vector(references, LAMBDAS[0]))


def test_an_external_requeue_counts_once_and_resumes_bit_identically(sweep, references):
    log = sweep["logs"][1]
    assert "received SIGTERM" in log and "restart 1" in log and "resuming from" in log, log[-4000:]
    job1 = [json.loads(line) for line in sweep["outcome_log"] if json.loads(line)["job"] == 1]
    assert [o["outcome"] for o in job1] == ["interrupted", "finished"]  # two attempts, counted once
    assert_equal_vectors(vector(sweep["runs"], LAMBDAS[1]), vector(references, LAMBDAS[1]))
    meta = json.loads((run_dir(sweep["runs"], LAMBDAS[1]) / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["steps"] == 60


def test_one_handler_and_one_line_per_attempt(sweep):
    """Lightning's auto-requeue is off: only the run's lifecycle answers, and says so once per attempt."""
    for log in sweep["logs"]:
        assert "SLURM auto-requeueing enabled" not in log
        assert log.count("Lightning's auto-requeue is off") == 2, log[-4000:]  # two attempts
        assert "weights_only" not in log


# ---- the sbatch template ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template_jobs(cluster, work, cache_dir, references) -> dict:
    """``sbatch sweeps/slurm_train.sbatch`` for the two λ (one CPU each); once both have a checkpoint, SIGUSR1
    goes to job 0's batch shell and to job 1's step. Waits until both have left the queue."""
    runs, env = work / "template", {**job_env(cluster, work, cache_dir), "ORTHOREG_PYTHON": sys.executable}
    jobs = []
    for lam in LAMBDAS:
        done = subprocess.run(
            ["sbatch", "--parsable", "--cpus-per-task=1", f"--output={work}/template-%j.out",
             "sweeps/slurm_train.sbatch", *RUN, f"ortho.lam={lam}", f"paths.runs_dir={runs}"],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        jobs.append(done.stdout.strip())
    wait_for_checkpoints(runs, LAMBDAS)
    cluster.run("scancel", "--batch", "--signal=USR1", jobs[0])  # as --signal=B:USR1@90 sends it
    cluster.run("scancel", "--signal=USR1", jobs[1])  # as --signal=USR1@90 sends it
    deadline = time.time() + WAIT_S
    while (
        time.time() < deadline
        and cluster.run("squeue", "-h", "-j", ",".join(jobs), check=False).stdout.strip()
    ):
        time.sleep(0.5)
    return {"runs": runs, "logs": [(work / f"template-{j}.out").read_text(errors="replace") for j in jobs]}


@pytest.mark.parametrize("job, where", [(0, "batch shell"), (1, "step")])
def test_the_sbatch_template_saves_requeues_and_resumes_on_usr1(template_jobs, references, job, where):
    log, lam = template_jobs["logs"][job], LAMBDAS[job]
    assert "received SIGUSR1" in log and "requeued SLURM job" in log, f"SIGUSR1 to the {where}: {log[-4000:]}"
    assert "restart 0: trainer.devices=1 ++trainer.num_nodes=1 data.num_workers=0" in log
    assert "restart 1:" in log and "resuming from" in log, log[-4000:]
    meta = json.loads((run_dir(template_jobs["runs"], lam) / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["steps"] == 60
    assert_equal_vectors(vector(template_jobs["runs"], lam), vector(references, lam))


# ---- what sbatch refuses, and a campaign ------------------------------------------------------------


def test_a_job_this_cluster_refuses_is_one_line_before_anything_is_written(
    cluster, work, capsys, monkeypatch, restore_logging
):
    """``train.py -m hydra/launcher=slurm trainer=gpu`` on this CPU-only node: the real sbatch's refusal, one
    line naming the option, exit 2, no folder; an unknown partition is named the same way."""
    from orthoreg_pl.cli.precheck import precheck
    from orthoreg_pl.runs.slurm import check_submission

    for key in ("SLURM_CONF", "PATH"):
        monkeypatch.setenv(key, cluster.env[key])
    runs = work / "refused"
    with pytest.raises(SystemExit) as done:
        precheck(
            "train",
            ["-m", "hydra/launcher=slurm", *RUN, "trainer=gpu", "ortho.lam=0.1,1", f"paths.runs_dir={runs}"],
        )
    lines = capsys.readouterr().err.splitlines()
    assert done.value.code == 2 and len(lines) == 2 and lines[1].startswith("usage: python train.py"), lines
    assert lines[0] == (
        "error: sbatch refuses the SLURM launcher's job (Invalid generic resource (gres) specification); the "
        "option it rejected: --gpus-per-node=1 (hydra.launcher.gpus_per_node, set from trainer.accelerator and "
        "trainer.devices)"
    )
    assert not runs.exists()
    cfg = compose_config([*RUN, "hydra/launcher=slurm", "hydra.launcher.partition=nosuch"], keep_hydra=True)
    with pytest.raises(
        OrthoRegError, match=r"Invalid partition name specified.*rejected: --partition=nosuch"
    ):
        check_submission(cfg, jobs=2, env=cluster.env)


def test_a_reduced_campaign_runs_through_the_slurm_launcher(cluster, work, cache_dir):
    root = work / "campaign"
    done = subprocess.run(
        [sys.executable, "-m", "orthoreg_pl.campaign", "experiment=campaign_quickstart", "launcher=slurm",
         "datasets=[digits,shapes]", "modes=[standard_ortho]", "lambdas=[0.1]", "experiments.negation=null",
         'overrides.train=["trainer.max_steps=3","trainer.enable_progress_bar=false"]',
         'overrides.merge=["protocol.alphas=[0,1]"]', "logger=none", f"paths.root_dir={root}"],
        cwd=PROJECT_ROOT, env=job_env(cluster, work, cache_dir), capture_output=True, text=True, timeout=WAIT_S,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    summary = json.loads((root / "campaigns" / "quickstart" / "summary.json").read_text())
    (row,) = summary["rows"]
    assert row["mode"] == "standard_ortho" and row["status"] == "ok" and row["objective"] is not None, row
    assert len(list((root / "runs").rglob(".submitit/*_*/*_result.pkl"))) == 2  # two training array jobs
    assert len(list((root / "reports").rglob(".submitit/*/*_result.pkl"))) == 1  # the addition report
