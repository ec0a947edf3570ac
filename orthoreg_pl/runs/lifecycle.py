"""What keeps a fine-tuning run resumable and honest while it trains.

:class:`RunLifecycle` (a Lightning callback that ``training.train`` always adds) stores the run's
identity and the RNG states in every checkpoint and refuses a checkpoint of another identity; on
SIGINT (Ctrl-C), SIGTERM or SIGUSR1 (SLURM's pre-emption warning, ``--signal=SIGUSR1@90``) it saves ``last.ckpt`` at
the next optimizer-step boundary, requeues the job under SLURM, and stops the run with
:class:`~orthoreg_pl.errors.RunInterrupted`; it never lets a checkpoint with non-finite weights be
written. The non-finite loss check sits in the module's ``training_step`` (``modules/base.py``).

Inside a submitit job (``hydra/launcher=slurm``) the pre-emption signal is submitit's (SIGUSR2 unless
``SUBMITIT_PREEMPT_SIGNAL`` says otherwise; SIGUSR1 is treated alike): after saving ``last.ckpt`` the
lifecycle hands the signal to submitit's own handler, which our handler replaced. submitit then
checkpoints the submitted callable (Hydra's launcher resubmits the same job), requeues the job and exits
without a result, so the launcher keeps waiting and the requeued job resumes from ``last.ckpt``; the
run stops with :class:`RunRequeued`, a ``SystemExit`` carrying submitit's exit status.

Lightning's own SLURM handler is switched off (training/trainer.py: its SLURM environment with
``auto_requeue=False``), so one handler acts on a signal, and a SLURM job logs one line saying which.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import lightning as L
import numpy as np
import torch

from orthoreg_pl.errors import OrthoRegError, RunFailed, RunInterrupted

log = logging.getLogger(__name__)
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)  # Ctrl-C, kill / scancel, SLURM's warning


def rng_states() -> dict:
    """Every RNG's state, in types a ``weights_only`` checkpoint load accepts (tensors, tuples, numbers)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def submitit_preemption_signal() -> int | None:
    """The signal on which submitit checkpoints and requeues this job; None outside a submitit job.

    submitit exports ``SUBMITIT_EXECUTOR`` (``slurm``, ``local``) to the job and installs its handler for
    this signal before it calls the submitted function."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    try:
        import submitit

        return int(submitit.JobEnvironment()._usr_sig())
    except Exception as err:  # not installed, or an environment it does not recognise
        log.debug("SUBMITIT_EXECUTOR is set but no submitit job environment: %s", err)
        return None


class RunRequeued(SystemExit):
    """submitit requeued the job after the lifecycle saved ``last.ckpt``; the requeued job resumes from it.

    A ``SystemExit`` with submitit's exit status (-1; 144 under its local executor, which requeues on
    that status), like the one submitit's handler raises: the entry point records no outcome for this
    attempt and submitit writes no result, so the launcher waits for the requeued job."""

    def __init__(self, message: str, code: int | str | None, signum: int) -> None:
        super().__init__(code)
        self.message = message
        self.signum = signum

    def __str__(self) -> str:
        return self.message


def slurm_job_id() -> str | None:
    """This SLURM job's id as ``scontrol`` takes it (``<array>_<task>`` in an array); None outside SLURM."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID") or None


def requeue_slurm_job() -> None:
    """``scontrol requeue`` this SLURM job (array jobs included), as Lightning's own requeue does."""
    job = slurm_job_id()
    if not job:
        return
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except OSError as err:
        log.warning("could not requeue SLURM job %s: %s", job, err)
        return
    if done.returncode == 0:
        log.info("requeued SLURM job %s", job)
    else:
        log.warning("requeueing SLURM job %s failed: %s", job, done.stderr.strip())


class RunLifecycle(L.Callback):
    def __init__(self, identity_hash: str, checkpoint_path: str | Path) -> None:
        self.identity_hash = identity_hash
        self.checkpoint_path = Path(checkpoint_path)
        self.pending_signal: int | None = None
        self._fitting = False
        self._step_before = 0
        self._previous: dict[int, object] = {}  # the handlers ours replaced
        self._submitit_signal: int | None = None

    # ---- signals ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def signal_handlers(self) -> Iterator[None]:
        """Handle SIGINT, SIGTERM and SIGUSR1 (and submitit's pre-emption signal inside a submitit job) for the
        duration of the run (installed before Lightning's own, so Lightning keeps ours and does not save
        its mid-step SLURM checkpoint)."""
        self._submitit_signal = submitit_preemption_signal()
        signals = dict.fromkeys(
            [*HANDLED_SIGNALS, self._submitit_signal] if self._submitit_signal else HANDLED_SIGNALS
        )
        self._previous = {s: signal.signal(s, self._on_signal) for s in signals}
        self._announce(list(signals))
        try:
            yield
        finally:
            self._restore_handlers()

    def _announce(self, signals: list[int]) -> None:
        """One line (global rank 0 of a SLURM job) naming the signals this run answers and how."""
        job = slurm_job_id()
        if job is None or os.environ.get("SLURM_PROCID", "0") != "0":
            return
        stop = [s for s in (signal.SIGINT, signal.SIGTERM) if s in signals]
        requeue = [s for s in signals if s not in stop]
        log.info(
            "SLURM job %s: %s save %s after the current optimizer step and requeue the job, %s save and "
            "stop (orthoreg's handler; Lightning's auto-requeue is off)",
            job,
            ", ".join(signal.Signals(s).name for s in requeue),
            self.checkpoint_path.name,
            ", ".join(signal.Signals(s).name for s in stop),
        )

    def _restore_handlers(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)

    def _submitit_handler(self, signum: int | None) -> Callable[..., object] | None:
        """submitit's handler to hand ``signum`` to (None: handle it ourselves)."""
        if self._submitit_signal is None or signum not in (signal.SIGUSR1, self._submitit_signal):
            return None
        handler = self._previous.get(self._submitit_signal)
        return handler if callable(handler) else None

    def _hand_over(self, handler: Callable[..., object], signum: int, where: str) -> NoReturn:
        """Let submitit checkpoint the submission and requeue the job (``last.ckpt`` is already saved)."""
        name = signal.Signals(signum).name
        self._restore_handlers()  # the SIGTERM that the requeue sends goes to submitit's handler from now on
        log.warning("%s %s: handing the signal to submitit to requeue this job", name, where)
        try:
            handler(signum, None)
        except SystemExit as done:  # requeued: submitit exits
            raise RunRequeued(
                f"stopped by {name} {where}; submitit requeued the job, which resumes from {self.checkpoint_path}",
                done.code,
                signum,
            ) from None
        except Exception as err:  # not requeued (e.g. timed out max_num_timeout times), or scontrol failed
            raise RunInterrupted(
                f"stopped by {name} {where}; submitit did not requeue the job ({err}); run the same command "
                f"again to resume from {self.checkpoint_path}",
                signum,
            ) from err
        # submitit returns on every task but global rank 0, which requeues the whole job
        raise RunRequeued(f"stopped by {name} {where}; submitit's global rank 0 requeues the job", -1, signum)

    def _on_signal(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if not self._fitting:  # no optimizer step to wait for: stop now
            handler = self._submitit_handler(signum)
            if handler is not None:
                self._hand_over(handler, signum, "outside training")
            raise RunInterrupted(f"received {name} outside training; nothing new to save", signum)
        log.warning("received %s: saving a checkpoint after this optimizer step, then stopping", name)
        if self._submitit_handler(self.pending_signal) is None:  # a pending requeue is not downgraded
            self.pending_signal = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fitting = True
        if signal.SIGTERM in self._previous:
            # Lightning wraps our SIGTERM handler in its own when fitting starts; its part raises at the
            # end of a step, after this callback's turn (e.g. while a periodic checkpoint is written),
            # so a signal then stopped the run without saving the step. While fitting, ours decides alone.
            signal.signal(signal.SIGTERM, self._on_signal)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fitting = False

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._fitting = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step == self._step_before:  # a micro-batch of an accumulation: no step yet
            return
        stop = self.pending_signal is not None
        if trainer.world_size > 1:  # every process stops at the same step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        signum = self.pending_signal or signal.SIGTERM
        trainer.save_checkpoint(
            self.checkpoint_path, weights_only=False
        )  # all of it: the run resumes from it
        handler = self._submitit_handler(signum)
        if handler is not None:
            self._hand_over(handler, signum, f"at step {trainer.global_step}")
        if signum == signal.SIGUSR1 and trainer.is_global_zero:
            requeue_slurm_job()
        raise RunInterrupted(
            f"stopped by {signal.Signals(signum).name} at step {trainer.global_step}; checkpoint saved to "
            f"{self.checkpoint_path}; run the same command again to resume",
            signum,
        )

    # ---- checkpoints --------------------------------------------------------------------------------

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        for name, p in pl_module.named_parameters():
            if p.requires_grad and not torch.isfinite(p).all():
                raise RunFailed(
                    f"non-finite weight {name} at step {trainer.global_step}: no checkpoint written "
                    "(likely cause: a learning rate or λ too high)"
                )

    def state_dict(self) -> dict:
        return {"identity": self.identity_hash, "rng": rng_states()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("identity") != self.identity_hash:
            raise OrthoRegError(
                f"checkpoint {self.checkpoint_path} belongs to run {state.get('identity')!r}, not to this "
                f"run ({self.identity_hash}); refusing to resume another configuration's training"
            )
        set_rng_states(state["rng"])
