"""How a job ends (``train.py``, ``merge.py`` and ``python -m orthoreg_pl.campaign`` alike): in one line
and an exit status, with its outcome recorded for the multirun it belongs to.

Single run: bad input exits 2, a failed run 1, an interrupted one 128 + the signal (130 for Ctrl-C,
143 for SIGTERM), each with one line on stderr; ``HYDRA_FULL_ERROR=1`` shows an unexpected error's
traceback. In a multirun a bad or failed job is reported and the sweep goes on (its summary exits 1
at the end); an interrupted job asks the sweep to start no further job (runs/stop.py), and the
sweep's summary exits with 128 + the signal.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import configure_log
from hydra.types import RunMode
from omegaconf import DictConfig

from orthoreg_pl.errors import OrthoRegError, RunFailed, RunInterrupted
from orthoreg_pl.runs.outcomes import record_outcome
from orthoreg_pl.runs.progress import clear_progress, job_label, report_progress
from orthoreg_pl.runs.stop import job_signal_handlers, request_stop, stop_signal

T = TypeVar("T")
log = logging.getLogger(__name__)


def remove_empty_run_dir(run_dir: Path, stop_at: Path) -> None:
    """Hydra made the output folder (and its parents) before the job failed: leave nothing behind."""
    stop_at = stop_at.resolve()
    run_dir = run_dir.resolve()
    while run_dir.is_dir() and run_dir != stop_at and not any(run_dir.iterdir()):
        run_dir.rmdir()
        if stop_at not in run_dir.parents:
            break
        run_dir = run_dir.parent


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextlib.contextmanager
def this_job_argv() -> Iterator[None]:
    """In a multirun, ``sys.argv`` is this job's command line while it runs.

    Lightning's DDP launcher starts the other processes of a run by re-running ``sys.argv`` with
    ``hydra.run.dir`` set to the job's folder; with the multirun's own argv every process would run the
    whole sweep. The job's overrides without ``-m`` are the single run it is (``hydra.run.dir`` and
    ``hydra.sweep.subdir`` name the same folder in configs/hydra/)."""
    if not in_multirun():
        yield
        return
    saved, saved_env = sys.argv, {k: os.environ.get(k) for k in DIST_ENV}
    sys.argv = [saved[0], *HydraConfig.get().overrides.task]
    try:
        yield
    finally:
        sys.argv = saved
        end_process_group(saved_env)


DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK")


def end_process_group(saved_env: dict[str, str | None]) -> None:
    """Lightning leaves a DDP job's process group initialised and its rendezvous variables set (with
    LOCAL_RANK set it takes the next job's processes as started by someone else and waits for them):
    the next job of the multirun starts afresh."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def reapply_job_logging() -> None:
    """Apply the job's logging config (configs/hydra/job_logging) once more. Lightning sets its loggers
    to INFO (and may add a handler of its own) when it is imported, which is now after Hydra configured
    the job's logging (the command line is checked before any heavy import): without this, its INFO
    lines would show, twice in a joblib worker."""
    if HydraConfig.initialized():
        configure_log(HydraConfig.get().job_logging, HydraConfig.get().verbose)


def run_or_exit(job: Callable[[DictConfig], T], cfg: DictConfig, root: str | Path) -> T | None:
    """Run ``job(cfg)`` and record its outcome; see the module docstring for how failures end."""
    reapply_job_logging()
    multirun = in_multirun()
    stopped = stop_signal() if multirun else None
    if stopped is not None:  # the sweep was asked to stop before this job started
        name = signal.Signals(stopped).name
        record_outcome("not run", f"the sweep was stopped by {name}")
        print(f"not run: the sweep was stopped by {name}", file=sys.stderr)
        return None
    started = time.perf_counter()
    if multirun:
        report_progress(job_label(list(HydraConfig.get().overrides.task)), force=True)
    try:
        with job_signal_handlers(), this_job_argv():
            result = job(cfg)
    except (RunInterrupted, KeyboardInterrupt) as err:
        signum = getattr(err, "signum", signal.SIGINT)
        message = str(err) or "stopped by SIGINT (Ctrl-C)"
        record_outcome("interrupted", message, time.perf_counter() - started)
        print(f"interrupted: {message}", file=sys.stderr)
        if multirun and not os.environ.get("SUBMITIT_EXECUTOR"):
            request_stop(signum)  # a local sweep stops: no further job starts, it ends with 128 + signal
            return None
        sys.exit(
            128 + signum
        )  # a single run, or a SLURM job (its signal is its own: a requeue, a pre-emption)
    except (OrthoRegError, RunFailed) as err:
        code = 2 if isinstance(err, OrthoRegError) else 1
        message = str(err)
    except Exception as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # Hydra prints the whole traceback
        if multirun:
            log.exception("job failed")  # a bug, not bad input: the traceback goes to the job's log
        first = (str(err).strip().splitlines() or [""])[0]
        code, message = (
            1,
            f"unexpected {type(err).__name__}: {first} (HYDRA_FULL_ERROR=1 shows the traceback)",
        )
    else:
        skipped = getattr(result, "skipped", False)
        record_outcome("skipped" if skipped else "finished", seconds=time.perf_counter() - started)
        return result
    finally:
        clear_progress()
    remove_empty_run_dir(Path(cfg.paths.output_dir), stop_at=Path(root))
    print(f"error: {message}", file=sys.stderr)
    record_outcome("failed", message, time.perf_counter() - started)
    if multirun:
        return None
    sys.exit(code)


def objective(value: float | None, direction: str) -> float:
    """The value a Hydra sweeper optimises; a failed job gives NaN (Optuna marks such a trial failed)."""
    if direction not in ("maximize", "minimize"):
        raise OrthoRegError(f"objective.direction={direction!r}; expected maximize or minimize")
    return math.nan if value is None else float(value)


def result_field(result: Any, metric: str) -> float | None:
    """``result["a"]["b"]`` for ``metric="a/b"`` (None when absent)."""
    for key in metric.split("/"):
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result
