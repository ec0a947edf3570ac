"""What a SLURM job asks for, and whether ``sbatch`` takes it, before a multirun writes anything.

``hydra/launcher=slurm`` (configs/hydra/launcher/slurm.yaml) takes the shape of each job from the
composed config through ``${slurm:<key>}`` (:func:`job_resources`): GPUs and tasks per node from
``trainer.accelerator`` and ``trainer.devices``, nodes from ``trainer.num_nodes``, CPUs per task from
``data.num_workers``. The cluster's side (partition, account, QoS, time, memory) is a profile of
``ORTHOREG_SLURM_*`` environment variables a user sets once (docs/campaigns.md).

:func:`check_submission` hands the script submitit would submit to ``sbatch --test-only``; a refusal
becomes one line naming the option sbatch rejected, before Hydra writes ``multirun.yaml`` or submits
anything (the command line's check, cli/precheck.py, and the campaign's plan call it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from orthoreg_pl.errors import OrthoRegError

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
RESOURCES = ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task")
# The hydra.launcher key behind each sbatch option submitit writes, and where its value comes from.
OPTION_SOURCES = {
    "partition": ("partition", "ORTHOREG_SLURM_PARTITION"),
    "account": ("account", "ORTHOREG_SLURM_ACCOUNT"),
    "qos": ("qos", "ORTHOREG_SLURM_QOS"),
    "constraint": ("constraint", "ORTHOREG_SLURM_CONSTRAINT"),
    "time": ("timeout_min", "ORTHOREG_SLURM_TIME_MIN"),
    "mem": ("mem_gb", "ORTHOREG_SLURM_MEM_GB"),
    "gpus-per-node": ("gpus_per_node", "trainer.accelerator and trainer.devices"),
    "ntasks-per-node": ("tasks_per_node", "trainer.devices"),
    "nodes": ("nodes", "trainer.num_nodes"),
    "cpus-per-task": ("cpus_per_task", "data.num_workers + 1"),
}
# Options a refusal is never blamed on: how submitit names, logs and signals the job.
NOT_RESOURCES = ("job-name", "output", "error", "open-mode", "signal", "wckey", "array", "requeue")
SBATCH_TIMEOUT_S = 60


def _device_count(accelerator: str, devices: Any) -> int:
    """How many devices (one process each) the run uses per node, as Lightning counts them."""
    if isinstance(devices, (list, tuple, ListConfig)) and devices:
        return len(devices)
    if isinstance(devices, str) and "," in devices:  # Lightning's "0,1" form
        return len([d for d in devices.split(",") if d.strip()])
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    if accelerator == "cpu" and devices == "auto":
        return 1  # Lightning's CPU accelerator: one process
    raise OrthoRegError(
        f"trainer.devices={devices!r} with trainer.accelerator={accelerator}; the SLURM launcher asks for one "
        "task per device: expected a number of devices per node, e.g. trainer.devices=4"
    )


def job_resources(trainer: Mapping | None, data: Mapping | None) -> dict[str, int | None]:
    """nodes, tasks_per_node, gpus_per_node (None: no GPU asked for) and cpus_per_task of one job.

    A CPU run (``trainer.accelerator=cpu``) asks for no GPU; any other accelerator (``gpu``, ``cuda``,
    ``auto``) for one GPU per device, so a GPU run on a CPU partition is refused by sbatch, not run on
    the CPU. One task per device (Lightning takes one process per SLURM task), and the data loader's
    workers plus the process itself as CPUs per task."""
    trainer, data = trainer or {}, data or {}
    accelerator = str(trainer.get("accelerator", "cpu"))
    devices = _device_count(accelerator, trainer.get("devices", 1))
    num_nodes, workers = trainer.get("num_nodes", 1), data.get("num_workers", 0)
    if not isinstance(num_nodes, int) or num_nodes < 1:
        raise OrthoRegError(f"trainer.num_nodes={num_nodes!r}; expected a number of nodes >= 1")
    if not isinstance(workers, int) or workers < 0:
        raise OrthoRegError(f"data.num_workers={workers!r}; expected a number of workers >= 0")
    return {
        "nodes": num_nodes,
        "tasks_per_node": devices,
        "gpus_per_node": None if accelerator == "cpu" else devices,
        "cpus_per_task": workers + 1,
    }


def slurm_resource(key: str, *, _root_: DictConfig) -> int | None:
    """``${slurm:gpus_per_node}`` (nodes, tasks_per_node, cpus_per_task): :func:`job_resources` of the
    composed config the launcher belongs to."""
    if key not in RESOURCES:
        raise OrthoRegError(f"${{slurm:{key}}}; expected one of {', '.join(RESOURCES)}")
    return job_resources(_root_.get("trainer"), _root_.get("data"))[key]


def uses_slurm(cfg: DictConfig) -> bool:
    """The composed config (with its ``hydra`` node) runs its multirun through the SLURM launcher."""
    return OmegaConf.select(cfg, "hydra.launcher._target_", default=None) == SLURM_LAUNCHER


def submission_script(params: Mapping[str, Any], jobs: int = 1) -> str:
    """The sbatch script the SLURM launcher submits for ``jobs`` jobs with these ``hydra.launcher``
    settings, built as hydra-submitit-launcher builds it (submitit's AutoExecutor, then its script)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = {k: v for k, v in params.items() if k != "_target_"}
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=params["submitit_folder"], slurm_max_num_timeout=params["max_num_timeout"]
    )
    shared = set(BaseQueueConf.__dataclass_fields__)
    executor.update_parameters(
        **{
            (k if k in shared else f"slurm_{k}"): v
            for k, v in params.items()
            if k not in ("submitit_folder", "max_num_timeout")
        }
    )
    slurm = executor._executor  # noqa: SLF001 - the executor whose script is submitted
    if jobs > 1:
        slurm.parameters["map_count"] = jobs  # an array, as SlurmExecutor submits several jobs
    try:
        return slurm._make_submission_file_text(slurm._submitit_command_str, "check")  # noqa: SLF001
    finally:
        slurm.parameters.pop("map_count", None)


def _sbatch_test(script: str, env: Mapping[str, str] | None) -> tuple[bool, str]:
    """(accepted, sbatch's message) for ``sbatch --test-only`` of ``script``; nothing is submitted."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="orthoreg-sbatch-check-") as f:
        f.write(script)
        f.flush()
        try:
            done = subprocess.run(
                ["sbatch", "--test-only", f.name],
                capture_output=True,
                text=True,
                env=env,
                timeout=SBATCH_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise OrthoRegError(
                f"sbatch --test-only gave no answer in {SBATCH_TIMEOUT_S} s; is the SLURM controller up "
                "(scontrol ping)?"
            ) from None
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "failure" in line.lower()]
    return done.returncode == 0, "; ".join(dict.fromkeys(_strip_prefix(line) for line in errors or lines))


def _strip_prefix(line: str) -> str:
    for prefix in ("sbatch: error: ", "sbatch: ", "allocation failure: "):
        if line.startswith(prefix):
            return line[len(prefix) :]
    return line


def _option(line: str) -> str:
    return line.removeprefix("#SBATCH --").split("=", 1)[0]


def _is_resource(line: str) -> bool:
    return line.startswith("#SBATCH --") and _option(line) not in NOT_RESOURCES


def _rejected_option(script: str, env: Mapping[str, str] | None) -> str | None:
    """The ``#SBATCH`` line whose removal alone makes sbatch accept the script (None: no single one)."""
    lines = script.splitlines()
    for i, line in enumerate(lines):
        if _is_resource(line) and _sbatch_test("\n".join(lines[:i] + lines[i + 1 :]), env)[0]:
            return line.removeprefix("#SBATCH ")
    return None


def _describe(flag: str) -> str:
    """``--gpus-per-node=1`` -> where the value came from and how to change it."""
    key, source = OPTION_SOURCES.get(_option("#SBATCH " + flag), (None, None))
    if key is None:
        return f"{flag} (hydra.launcher.additional_parameters or hydra.launcher.setup)"
    if source.startswith("ORTHOREG_"):
        return f"{flag} (hydra.launcher.{key}, or {source} in the profile)"
    return f"{flag} (hydra.launcher.{key}, set from {source})"


def check_submission(cfg: DictConfig, jobs: int = 1, env: Mapping[str, str] | None = None) -> None:
    """Refuse, in one line, a SLURM multirun that sbatch would not accept (nothing is submitted)."""
    if not uses_slurm(cfg):
        return
    if shutil.which("sbatch", path=(env or os.environ).get("PATH")) is None:
        raise OrthoRegError(
            "hydra/launcher=slurm submits with sbatch, which is not on PATH; run on a SLURM login node, "
            "or choose another launcher (basic, joblib)"
        )
    if any(OmegaConf.is_interpolation(cfg.hydra.launcher, key) for key in RESOURCES):
        job_resources(cfg.get("trainer"), cfg.get("data"))  # what it cannot ask for: named here, in one line
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    script = submission_script(params, jobs)
    accepted, message = _sbatch_test(script, env)
    if accepted:
        return
    if not _sbatch_test("\n".join(line for line in script.splitlines() if not _is_resource(line)), env)[0]:
        raise OrthoRegError(
            f"sbatch refuses any job here ({message}); is the SLURM cluster reachable (scontrol ping)?"
        )
    flag = _rejected_option(script, env)
    asked = ", ".join(line.removeprefix("#SBATCH ") for line in script.splitlines() if _is_resource(line))
    what = f"the option it rejected: {_describe(flag)}" if flag else f"the job asked for {asked}"
    raise OrthoRegError(f"sbatch refuses the SLURM launcher's job ({message}); {what}")


def shape_text(resources: Mapping[str, int | None]) -> str:
    return ", ".join(f"{key}={resources[key]}" for key in RESOURCES)


def launcher_overrides(resources: Mapping[str, int | None]) -> list[str]:
    """``hydra.launcher.<key>=<value>`` for each resource: a shape named outright, not derived."""
    return [
        f"hydra.launcher.{key}={'null' if resources[key] is None else resources[key]}" for key in RESOURCES
    ]


def check_slurm_multirun(base: DictConfig, jobs: list[tuple[list[str], DictConfig]]) -> None:
    """A multirun through the SLURM launcher: every job fits the shape the launcher asks for, and sbatch
    takes it. Hydra composes the launcher from ``base``, the overrides all jobs share, so a job whose
    swept values change its trainer (``merge.py -m experiment=a,b``) would get another's shape; a
    resource set outright (``hydra.launcher.cpus_per_task=8``) is the user's and not compared."""
    if not uses_slurm(base):
        return
    launcher = base.hydra.launcher
    derived = [key for key in RESOURCES if OmegaConf.is_interpolation(launcher, key)]
    shape = job_resources(base.get("trainer"), base.get("data"))
    for overrides, cfg in jobs:
        theirs = job_resources(cfg.get("trainer"), cfg.get("data"))
        if any(theirs[key] != shape[key] for key in derived):
            raise OrthoRegError(
                f"hydra/launcher=slurm asks once for the whole multirun, from the overrides its jobs share "
                f"({shape_text(shape)}), but the job {' '.join(overrides)} needs {shape_text(theirs)}; give "
                "the trainer (and data.num_workers) outside the sweep, e.g. trainer=cpu"
            )
    check_submission(base, jobs=len(jobs))


__all__ = [
    "SLURM_LAUNCHER",
    "check_slurm_multirun",
    "check_submission",
    "job_resources",
    "launcher_overrides",
    "shape_text",
    "slurm_resource",
    "submission_script",
]
