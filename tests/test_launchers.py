"""Hydra launchers (configs/hydra/launcher/), the Optuna sweeper's storage, and pre-emption under submitit.

No cluster is needed: the SLURM launcher submits through a fake ``sbatch`` that keeps the script it is
given, submitit's own signal handler requeues through a fake ``scontrol``, and one real multirun goes
through submitit's local executor, is pre-empted mid-training and resumes. Ray runs only where the
opt-in ``ray`` extra is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CONFIG_DIR, PROJECT_ROOT, compose_config, cpu_trainer
from omegaconf import OmegaConf

from orthoreg_pl.errors import OrthoRegError, RunInterrupted
from orthoreg_pl.runs.lifecycle import RunLifecycle, RunRequeued

submitit = pytest.importorskip("submitit")

# The tiny quickstart run, as short as a real train.py job gets.
TINY = [
    "experiment=quickstart",
    "dataset=digits",
    "mode=standard_ortho",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
    "eval_zeroshot=false",
    "logger=none",
]
PREEMPT = submitit.JobEnvironment._usr_sig()  # submitit's pre-emption signal (SIGUSR2 by default)


def has_plugin(name: str) -> bool:
    return importlib.util.find_spec(f"hydra_plugins.{name}") is not None


def subprocess_env(tmp: Path, cache: Path) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HYDRA_", "WANDB_", "ORTHOREG_", "SUBMITIT_", "SLURM_"))
    }
    return {**clean, "ORTHOREG_CACHE_DIR": str(cache), "ORTHOREG_DATA_ROOT": str(tmp / "data")}


# ---- the launcher configs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "launcher, target",
    [
        ("basic", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
        ("ray", "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"),
    ],
)
def test_launcher_composes_with_train_config(launcher, target):
    cfg = compose_config(["experiment=quickstart", f"hydra/launcher={launcher}"], keep_hydra=True)
    assert cfg.hydra.launcher._target_ == target


def test_joblib_launcher_runs_two_jobs_at_once_by_default():
    from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf

    cfg = compose_config(["experiment=quickstart", "hydra/launcher=joblib"], keep_hydra=True)
    # every field of the plugin's schema, spelled out (our file shadows the plugin's own `joblib`)
    assert set(cfg.hydra.launcher) == set(JobLibLauncherConf.__dataclass_fields__)
    assert cfg.hydra.launcher.n_jobs == 2 and cfg.hydra.launcher.prefer == "processes"
    cfg = compose_config(
        ["experiment=quickstart", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4"], keep_hydra=True
    )
    assert cfg.hydra.launcher.n_jobs == 4


def test_ray_launcher_config_matches_the_plugins_schema():
    cfg = compose_config(["experiment=quickstart", "hydra/launcher=ray"], keep_hydra=True)
    assert cfg.hydra.launcher.ray.remote == {"num_gpus": 1, "num_cpus": 4, "max_calls": 1}
    assert cfg.hydra.launcher.ray.init.address is None
    if has_plugin("hydra_ray_launcher"):
        from hydra_plugins.hydra_ray_launcher._config import RayLauncherConf

        assert set(cfg.hydra.launcher) == set(RayLauncherConf.__dataclass_fields__)


def test_slurm_launcher_asks_for_what_the_trainer_uses():
    """GPUs and tasks per node follow the trainer, nodes trainer.num_nodes, CPUs the loader's workers + 1."""
    cfg = compose_config(
        ["dataset=mnist", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "hydra/launcher=slurm",
         "paths.runs_dir=/r"],
        keep_hydra=True,
    )  # fmt: skip
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert launcher.cpus_per_task == cfg.data.num_workers + 1 == 5
    assert launcher.submitit_folder == "/r/.submitit/%j"
    assert (launcher.mem_gb, launcher.timeout_min, launcher.array_parallelism) == (None, 240, 32)
    assert (launcher.partition, launcher.account, launcher.qos, launcher.constraint) == (None,) * 4
    assert (launcher.signal_delay_s, launcher.max_num_timeout) == (180, 20)
    assert launcher.additional_parameters == {"requeue": True}
    assert launcher.setup[0] == "export PYTHONUNBUFFERED=1"
    assert "restart $((SLURM_RESTART_COUNT + 0))" in launcher.setup[1]  # 0 before the first requeue
    cfg = compose_config(["experiment=quickstart", "hydra/launcher=slurm"], keep_hydra=True)
    launcher = cfg.hydra.launcher  # trainer=cpu, no loader workers: one task, one CPU, no GPU
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node, launcher.cpus_per_task) == (
        1,
        None,
        1,
        1,
    )
    cfg = compose_config(
        ["experiment=finetune_vitb32", "dataset=mnist", "hydra/launcher=slurm"], keep_hydra=True
    )
    assert (cfg.hydra.launcher.gpus_per_node, cfg.hydra.launcher.tasks_per_node) == (1, 1)  # trainer=gpu


def test_slurm_profile_comes_from_the_environment(monkeypatch):
    profile = {"PARTITION": "cpu", "ACCOUNT": "lab", "QOS": "short", "CONSTRAINT": "avx2", "TIME_MIN": "30",
               "MEM_GB": "16"}  # fmt: skip
    for key, value in profile.items():
        monkeypatch.setenv(f"ORTHOREG_SLURM_{key}", value)
    launcher = compose_config(
        ["experiment=quickstart", "hydra/launcher=slurm"], keep_hydra=True
    ).hydra.launcher
    assert (launcher.partition, launcher.account, launcher.qos, launcher.constraint) == (
        "cpu",
        "lab",
        "short",
        "avx2",
    )
    assert (launcher.timeout_min, launcher.mem_gb) == (30, 16)
    launcher = compose_config(
        ["experiment=quickstart", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"], keep_hydra=True
    ).hydra.launcher
    assert launcher.partition == "gpu"  # the command line wins


@pytest.mark.parametrize(
    "trainer, data, expected",
    [
        ({"accelerator": "cpu", "devices": 1}, {"num_workers": 0}, (1, 1, None, 1)),
        ({"accelerator": "cpu", "devices": "auto"}, {}, (1, 1, None, 1)),
        ({"accelerator": "cpu", "devices": 2, "num_nodes": 1}, {"num_workers": 2}, (1, 2, None, 3)),
        ({"accelerator": "gpu", "devices": 4, "num_nodes": 2}, {"num_workers": 4}, (2, 4, 4, 5)),
        ({"accelerator": "auto", "devices": 1}, {"num_workers": 4}, (1, 1, 1, 5)),
        ({"accelerator": "gpu", "devices": [0, 1]}, {"num_workers": 0}, (1, 2, 2, 1)),
        ({"accelerator": "cuda", "devices": "0,1,2"}, {"num_workers": 0}, (1, 3, 3, 1)),
    ],
)
def test_job_resources_follow_the_trainer(trainer, data, expected):
    from orthoreg_pl.runs.slurm import job_resources

    got = job_resources(trainer, data)
    assert (got["nodes"], got["tasks_per_node"], got["gpus_per_node"], got["cpus_per_task"]) == expected


@pytest.mark.parametrize(
    "trainer, data, message",
    [
        (
            {"accelerator": "gpu", "devices": "auto"},
            {},
            r"trainer.devices='auto' with trainer.accelerator=gpu",
        ),
        ({"accelerator": "gpu", "devices": -1}, {}, r"trainer.devices=-1 .*e.g. trainer.devices=4"),
        ({"accelerator": "cpu", "devices": 1, "num_nodes": 0}, {}, r"trainer.num_nodes=0; expected"),
        ({"accelerator": "cpu", "devices": 1}, {"num_workers": -1}, r"data.num_workers=-1; expected"),
    ],
)
def test_job_resources_refuse_what_cannot_be_asked_for(trainer, data, message):
    from orthoreg_pl.runs.slurm import job_resources

    with pytest.raises(OrthoRegError, match=message):
        job_resources(trainer, data)


# A CPU-only cluster's sbatch: refuses any script that asks for a GPU, records every call.
CPU_ONLY_SBATCH = """#!/bin/sh
echo "$@" >> {calls}
for last; do :; done
if grep -q -- "--gpus-per-node" "$last"; then
  echo "sbatch: error: Invalid generic resource (gres) specification" >&2; exit 1
fi
echo "sbatch: Job 7 to start at 2026-01-01T00:00:00 using 1 processors on nodes n1 in partition cpu" >&2
"""


@pytest.fixture
def cpu_only_sbatch(tmp_path, monkeypatch) -> Path:
    """``sbatch`` (and ``srun``, which submitit looks for) of a cluster without GPUs; returns the call log."""
    calls, bin_dir = tmp_path / "sbatch_calls", tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text(CPU_ONLY_SBATCH.format(calls=calls))
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_a_refused_slurm_job_names_the_option_and_submits_nothing(tmp_path, cpu_only_sbatch):
    from orthoreg_pl.runs.slurm import check_submission

    base = ["experiment=quickstart", "hydra/launcher=slurm", f"paths.runs_dir={tmp_path / 'runs'}"]
    check_submission(compose_config(base, keep_hydra=True), jobs=2)  # trainer=cpu: accepted
    with pytest.raises(OrthoRegError) as refused:
        check_submission(compose_config([*base, "trainer=gpu"], keep_hydra=True), jobs=2)
    assert str(refused.value) == (
        "sbatch refuses the SLURM launcher's job (Invalid generic resource (gres) specification); the option it "
        "rejected: --gpus-per-node=1 (hydra.launcher.gpus_per_node, set from trainer.accelerator and "
        "trainer.devices)"
    )
    calls = cpu_only_sbatch.read_text().splitlines()
    assert len(calls) >= 3 and all(c.startswith("--test-only ") for c in calls)  # nothing submitted
    assert not (tmp_path / "runs").exists()


def test_a_cluster_that_refuses_every_job_is_named_as_such(tmp_path, monkeypatch):
    """No controller answers: sbatch refuses a job that asks for nothing too; one line, no option blamed."""
    from orthoreg_pl.runs.slurm import check_submission

    calls = tmp_path / "calls"
    (tmp_path / "sbatch").write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n'
        'echo "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)" >&2\n'
        "exit 1\n"
    )
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_config(["experiment=quickstart", "hydra/launcher=slurm"], keep_hydra=True)
    with pytest.raises(OrthoRegError) as refused:
        check_submission(cfg)
    assert str(refused.value) == (
        "sbatch refuses any job here (Batch job submission failed: Unable to contact slurm controller (connect "
        "failure)); is the SLURM cluster reachable (scontrol ping)?"
    )
    assert len(calls.read_text().splitlines()) == 2  # the job, then one asking for nothing


def test_without_sbatch_the_slurm_launcher_is_refused_in_one_line(tmp_path, monkeypatch):
    from orthoreg_pl.runs.slurm import check_submission

    monkeypatch.setenv("PATH", str(tmp_path))
    cfg = compose_config(["experiment=quickstart", "hydra/launcher=slurm"], keep_hydra=True)
    with pytest.raises(
        OrthoRegError, match=r"^hydra/launcher=slurm submits with sbatch, which is not on PATH"
    ):
        check_submission(cfg)
    check_submission(compose_config(["experiment=quickstart", "hydra/launcher=joblib"], keep_hydra=True))


def test_train_multirun_refused_by_sbatch_writes_nothing(tmp_path, cache_dir, cpu_only_sbatch):
    """``train.py -m hydra/launcher=slurm trainer=gpu`` on a CPU-only cluster: one error line and the usage,
    exit 2, before Hydra writes multirun.yaml or the outcome log."""
    runs = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "train.py", "-m", "hydra/launcher=slurm", *TINY, "trainer=gpu", "ortho.lam=0,1",
         f"paths.runs_dir={runs}"],
        cwd=PROJECT_ROOT, env=subprocess_env(tmp_path, cache_dir), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and lines[1].startswith("usage: python train.py"), done.stderr
    assert lines[0].startswith("error: sbatch refuses the SLURM launcher's job (Invalid generic resource")
    assert "--gpus-per-node=1 (hydra.launcher.gpus_per_node" in lines[0]
    assert not runs.exists()


def test_campaign_plan_refuses_a_slurm_job_sbatch_would_not_take(tmp_path, cpu_only_sbatch):
    from test_campaign import plan_of

    base = ["experiment=campaign_quickstart", "launcher=slurm", f"paths.root_dir={tmp_path}"]
    assert plan_of(*base).train  # CPU jobs: accepted
    with pytest.raises(OrthoRegError, match=r"rejected: --gpus-per-node=1 \(hydra.launcher.gpus_per_node"):
        plan_of(*base, 'overrides.all=["trainer=gpu"]')
    assert all(c.startswith("--test-only ") for c in cpu_only_sbatch.read_text().splitlines())


def test_a_sweep_whose_jobs_need_another_shape_than_the_launcher_is_refused(cpu_only_sbatch, capsys):
    """Hydra composes the launcher from the overrides the jobs share: sweeping the merge experiments leaves
    the launcher with merge.yaml's own trainer (accelerator auto: a GPU) while the quickstart jobs run on
    the CPU. One line says so; the trainer named outside the sweep fits them all."""
    from orthoreg_pl.cli.precheck import precheck

    argv = [
        "-m",
        "experiment=quickstart_addition,quickstart_negation",
        "hydra/launcher=slurm",
        "mode=standard_ortho",
    ]
    with pytest.raises(SystemExit) as done:
        precheck("merge", argv)
    (line, usage) = capsys.readouterr().err.splitlines()
    assert done.value.code == 2 and usage.startswith("usage: python merge.py")
    assert line == (
        "error: hydra/launcher=slurm asks once for the whole multirun, from the overrides its jobs share "
        "(nodes=1, tasks_per_node=1, gpus_per_node=1, cpus_per_task=5), but the job "
        "experiment=quickstart_addition hydra/launcher=slurm mode=standard_ortho needs nodes=1, tasks_per_node=1, "
        "gpus_per_node=None, cpus_per_task=1; give the trainer (and data.num_workers) outside the sweep, e.g. "
        "trainer=cpu"
    )
    assert not cpu_only_sbatch.exists()  # refused before sbatch was asked
    precheck("merge", [*argv, "trainer=cpu", "data.num_workers=0"])  # accepted
    assert all(c.startswith("--test-only ") for c in cpu_only_sbatch.read_text().splitlines())


def test_the_campaigns_merge_multirun_asks_for_what_its_experiments_need(tmp_path, cpu_only_sbatch):
    """The campaign sweeps addition and negation in one merge multirun; under SLURM it names the shape
    their jobs need as hydra.launcher overrides (here: the CPU, one CPU per task), and the merge
    multirun's own check (the overrides its jobs share) accepts it."""
    from test_campaign import plan_of

    from orthoreg_pl.cli.precheck import precheck

    plan = plan_of("experiment=campaign_quickstart", "launcher=slurm", f"paths.root_dir={tmp_path}")
    merge = list(plan.merge[0].overrides)
    assert "experiment=quickstart_clip_addition,quickstart_clip_negation" in merge
    shape = [o for o in merge if o.startswith("hydra.launcher.")]
    assert shape == [
        "hydra.launcher.nodes=1",
        "hydra.launcher.tasks_per_node=1",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
    ]
    precheck("merge", ["-m", *merge])  # exits 2 if refused (a GPU asked for on this CPU-only cluster)
    assert cpu_only_sbatch.read_text().count("--test-only") >= 2  # the plan's check, then the multirun's
    plain = plan_of("experiment=campaign_quickstart", "launcher=joblib", f"paths.root_dir={tmp_path}")
    assert not [o for o in plain.merge[0].overrides if o.startswith("hydra.launcher.")]


def _task(cfg):  # the task function handed to the launcher (pickled into the submission, never run)
    return None


def test_slurm_launcher_submits_a_job_array_with_requeue_and_the_preemption_signal(tmp_path, monkeypatch):
    """The SLURM launcher as Hydra builds it, submitting two jobs through a fake ``sbatch`` (and a fake
    ``srun``, which submitit only looks for): the script it
    writes asks for the partition, GPUs and tasks, requeueing, and submitit's signal before the time limit."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = tmp_path / "sbatch_script.sh"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {script}\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it, never runs it here
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    submitted = {}
    real_map_array = submitit.AutoExecutor.map_array

    def map_array(executor, fn, *iterables):  # submit for real (fake sbatch), but wait for no results
        submitted["jobs"] = real_map_array(executor, fn, *iterables)
        submitted["executor"] = executor
        return [type("Done", (), {"results": lambda self: ["done"]})() for _ in submitted["jobs"]]

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    overrides = [
        "experiment=quickstart",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.gpus_per_node=2",
        "hydra.launcher.tasks_per_node=2",
        "hydra.launcher.mem_gb=32",
        "hydra.launcher.timeout_min=90",
        "hydra.launcher.array_parallelism=1",
        "hydra.launcher.setup=['module load cuda','export X=1']",
        f"paths.runs_dir={tmp_path / 'runs'}",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="train"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks())
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=context, task_function=_task, config=cfg
        )
        returns = launcher.launch([["ortho.lam=1"], ["ortho.lam=10"]], initial_job_idx=0)

    assert returns == ["done", "done"]
    assert [job.job_id for job in submitted["jobs"]] == ["4242_0", "4242_1"]
    assert submitted["executor"]._executor.max_num_timeout == 20
    text = script.read_text()
    for line in [
        "#SBATCH --partition=gpu",
        "#SBATCH --nodes=1",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --cpus-per-task=1",  # experiment=quickstart: no loader workers
        "#SBATCH --mem=32GB",
        "#SBATCH --time=90",
        "#SBATCH --array=0-1%1",
        f"#SBATCH --signal={signal.Signals(PREEMPT).name[3:]}@180",
        "#SBATCH --requeue",
        "#SBATCH --job-name=orthoreg-train",
        "module load cuda\nexport X=1",
        "export SUBMITIT_EXECUTOR=slurm",
    ]:
        assert line in text, f"{line!r} not in the sbatch script:\n{text}"
    assert f"{tmp_path / 'runs'}/.submitit/" in text
    assert text.index("module load cuda") < text.index("srun")
    # what the pre-launch check shows `sbatch --test-only` is this very script
    from orthoreg_pl.runs.slurm import submission_script

    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert submission_script(params, jobs=2) == text


# ---- pre-emption under submitit ---------------------------------------------------------------------


class Steps(L.LightningModule):
    """A linear model whose training step ``at`` sends ``sig`` to this process."""

    def __init__(self, sig: int, at: int = 2) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.sig, self.at = sig, at

    def training_step(self, batch, batch_idx):
        if self.global_step == self.at:
            os.kill(os.getpid(), self.sig)
        return self.layer(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_until_signal(tmp_path: Path, sig: int) -> RunLifecycle:
    """Train ``Steps`` under the lifecycle's signal handlers until ``sig`` stops it (the caller expects how)."""
    lifecycle = RunLifecycle("identity", tmp_path / "last.ckpt")
    data = torch.utils.data.TensorDataset(torch.randn(64, 4))
    trainer = cpu_trainer(max_steps=20, callbacks=[lifecycle])
    with lifecycle.signal_handlers():
        trainer.fit(Steps(sig), torch.utils.data.DataLoader(data, batch_size=2))
    return lifecycle


@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch) -> Path:
    """``scontrol`` on PATH that records its arguments; returns the record file."""
    calls = tmp_path / "scontrol_calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


@pytest.fixture
def slurm_job(monkeypatch, tmp_path):
    """This process as task 0 of SLURM job 4242 started by submitit; the signal handlers are put back after."""
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path / "submitit"))
    for key, value in {"JOB_ID": "4242", "PROCID": "0", "LOCALID": "0", "NTASKS": "1", "NODEID": "0"}.items():
        monkeypatch.setenv(f"SLURM_{key}", value)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_preemption_in_a_submitit_job_is_handed_to_submitits_handler(tmp_path, slurm_job, fake_scontrol):
    """The checkpoint is saved first, then the handler ours replaced gets the signal; we requeue nothing."""
    calls = []

    def submitit_handler(signum, frame):
        calls.append((signum, (tmp_path / "last.ckpt").is_file()))
        raise SystemExit(-1)  # what submitit's handler does after requeueing

    signal.signal(PREEMPT, submitit_handler)
    name = signal.Signals(PREEMPT).name
    with pytest.raises(RunRequeued, match=rf"stopped by {name} at step 3; submitit requeued the job") as done:
        fit_until_signal(tmp_path, PREEMPT)
    assert done.value.code == -1 and isinstance(done.value, SystemExit)
    assert calls == [(PREEMPT, True)]
    assert not fake_scontrol.exists()
    assert signal.getsignal(PREEMPT) is submitit_handler  # put back


def test_submitits_real_handler_checkpoints_the_submission_and_requeues_once(
    tmp_path, slurm_job, fake_scontrol, monkeypatch
):
    """submitit's own SignalHandler, installed as submitit installs it in a job: it calls the submitted
    callable's ``checkpoint`` (Hydra's launcher resubmits the same job), requeues through ``scontrol``
    and exits; RunLifecycle does not requeue a second time."""
    from submitit.core.utils import DelayedSubmission

    import orthoreg_pl.runs.lifecycle as lifecycle_module

    monkeypatch.setattr(lifecycle_module, "requeue_slurm_job", lambda: pytest.fail("requeued by us too"))

    class Job:  # like hydra_submitit_launcher's BaseSubmititLauncher: checkpoint() resubmits itself
        def __call__(self):
            return None

        def checkpoint(self):
            (tmp_path / "checkpoint_called").write_text(str((tmp_path / "last.ckpt").is_file()))
            return DelayedSubmission(self)

    delayed = DelayedSubmission(Job())
    delayed.set_timeout(60, 3)
    env = submitit.JobEnvironment()
    env.paths.submitted_pickle.parent.mkdir(parents=True)
    env._handle_signals(env.paths, delayed)
    with pytest.raises(RunRequeued) as done:
        fit_until_signal(tmp_path, PREEMPT)
    assert done.value.code == -1
    assert (tmp_path / "checkpoint_called").read_text() == "True"  # our last.ckpt came first
    assert fake_scontrol.read_text().splitlines() == ["requeue 4242"]
    resubmitted = DelayedSubmission.load(env.paths.submitted_pickle)
    assert resubmitted._timeout_countdown == 3  # pre-empted, not timed out: no requeue used up


def test_sigterm_in_a_submitit_job_saves_and_stops_without_requeue(tmp_path, slurm_job, fake_scontrol):
    handed = []
    signal.signal(PREEMPT, lambda signum, frame: handed.append(signum))
    with pytest.raises(RunInterrupted, match="stopped by SIGTERM at step 3") as done:
        fit_until_signal(tmp_path, signal.SIGTERM)
    assert done.value.signum == signal.SIGTERM and not handed
    assert (tmp_path / "last.ckpt").is_file() and not fake_scontrol.exists()


def test_sigusr1_outside_submitit_still_requeues_with_scontrol(tmp_path, fake_scontrol, monkeypatch):
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(RunInterrupted, match="stopped by SIGUSR1 at step 3") as done:
        fit_until_signal(tmp_path, signal.SIGUSR1)
    assert done.value.signum == signal.SIGUSR1 and not isinstance(done.value, SystemExit)
    assert fake_scontrol.read_text().splitlines() == ["requeue 77"]
    assert signal.getsignal(signal.SIGUSR1) is before


def submitit_task_pids(folder: Path) -> list[int]:
    """The processes submitit started to run a job whose files live under ``folder`` (Linux /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in argv and any(str(folder).encode() in a for a in argv):
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the job's process in /proc")
def test_multirun_under_submitit_is_preempted_requeued_and_resumes(tmp_path, cache_dir):
    """train.py -m through submitit's local executor: the job gets submitit's pre-emption signal
    mid-training, saves last.ckpt, submitit requeues it, and the same job resumes and finishes; the
    launcher sees one finished job."""
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "train.py", "-m", "hydra/launcher=submitit_local", *TINY, "ortho.lam=1",
         "trainer.max_steps=16", "callbacks.checkpoint.every_n_train_steps=2", f"paths.runs_dir={runs}"],
        cwd=PROJECT_ROOT, env=subprocess_env(tmp_path, cache_dir),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline, sent = time.time() + 180, False
    while not sent and proc.poll() is None and time.time() < deadline:
        if any(runs.rglob("last.ckpt")):
            for pid in submitit_task_pids(runs):
                os.kill(pid, PREEMPT)
                sent = True
        time.sleep(0.05)
    output = proc.communicate(timeout=240)[0]
    assert sent and proc.returncode == 0, output
    assert "multirun: 1 jobs: 1 finished, 0 skipped, 0 failed" in output
    log = "".join(f.read_text() for f in sorted(runs.glob(".submitit/*/*_0_log.*")))  # .err and .out
    assert "handing the signal to submitit to requeue this job" in log, log
    assert "Requeued job" in log and "resuming from" in log
    (meta,) = runs.rglob("meta.json")
    state = json.loads(meta.read_text())
    assert state["status"] == "finished" and state["steps"] == 16


# ---- running jobs ------------------------------------------------------------------------------------


def test_joblib_multirun_of_train_runs_two_jobs(tmp_path, cache_dir):
    runs = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "train.py", "-m", "hydra/launcher=joblib", *TINY, "ortho.lam=0,1",
         "trainer.max_steps=2", f"paths.runs_dir={runs}"],
        cwd=PROJECT_ROOT, env=subprocess_env(tmp_path, cache_dir),
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Joblib.Parallel(n_jobs=2," in output and "multirun: 2 jobs: 2 finished" in output
    assert len(list(runs.rglob("task_vector.safetensors"))) == 2


APP = """
import hydra

@hydra.main(version_base="1.3", config_path=".", config_name="app")
def main(cfg):
    print("JOB", cfg.x, flush=True)
    return (float(cfg.x) - 2.0) ** 2

if __name__ == "__main__":
    main()
"""


def run_app(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    (tmp_path / "app.yaml").write_text("x: 0.0\n")
    return subprocess.run(
        [sys.executable, "app.py", "-m", f"hydra.sweep.dir={tmp_path / 'multirun'}", *args],
        cwd=tmp_path, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip


@pytest.mark.skipif(not has_plugin("hydra_ray_launcher"), reason="opt-in: pip install -e '.[ray]'")
def test_ray_launcher_runs_jobs_with_our_config(tmp_path):
    done = run_app(
        tmp_path,
        f"hydra.searchpath=[file://{CONFIG_DIR}]",
        "hydra/launcher=ray",
        "hydra.launcher.ray.remote.num_gpus=0",
        "hydra.launcher.ray.remote.num_cpus=1",
        "x=1,3",
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Ray Launcher is launching 2 jobs" in output
    assert "JOB 1" in output and "JOB 3" in output
