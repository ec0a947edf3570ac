"""Stopping a sweep cleanly: Ctrl-C (SIGINT) or SIGTERM asks every running job of a multirun to save
and stop at its next optimizer step, and no job to start after it.

The request is a file beside the multirun's outcome log (``<log>.stop``, holding the signal's number),
so it reaches every process of the sweep whatever the launcher: the job in the sweep's own process
(basic launcher), local worker processes (joblib), or jobs on a shared file system. A running job
sees the signal itself (its :class:`~orthoreg_pl.runs.lifecycle.RunLifecycle` saves ``last.ckpt``
and stops it as ``interrupted``) and then writes the request; a job that starts afterwards is not
run; the sweep then prints its summary and exits with 128 + the signal (130 for Ctrl-C).

Who handles what:
* a job, from its start (:func:`job_signal_handlers`, used by runs/job.py): the signal stops it at
  once with :class:`~orthoreg_pl.errors.RunInterrupted`; while it trains, its lifecycle defers that
  to the end of the optimizer step and saves first;
* the sweep's own process, while no job runs in it: it writes the request and hands the signal on to
  its worker processes as SIGINT (a signal sent to it alone, e.g. by a scheduler, would otherwise
  leave them running to the end). Where jobs run in worker processes (joblib), it ignores SIGINT
  instead, and so do the workers it starts (an ignored signal is inherited): a worker between jobs
  must not die of Ctrl-C, the workers' jobs see it themselves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from orthoreg_pl.errors import RunInterrupted
from orthoreg_pl.runs.outcomes import LOG_ENV

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_file() -> Path | None:
    """``<outcome log>.stop`` of the multirun this process belongs to (None outside a multirun)."""
    log_path = os.environ.get(LOG_ENV)
    return Path(log_path + ".stop") if log_path else None


def stop_signal() -> int | None:
    """The signal the sweep was stopped by, None while it runs on."""
    path = stop_file()
    if path is None or not path.is_file():
        return None
    try:
        return int(path.read_text().strip() or signal.SIGINT)
    except (OSError, ValueError):
        return int(signal.SIGINT)


def request_stop(signum: int) -> None:
    """Ask the sweep to start no further job (the first request's signal is kept)."""
    path = stop_file()
    if path is None or path.exists():
        return
    with contextlib.suppress(OSError):  # a read-only folder: the jobs still stop, the sweep may go on
        path.write_text(f"{int(signum)}\n")


def forward_to_children(signum: int) -> None:
    """Send ``signum`` to every process this one started (the sweep's workers and their jobs)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.send_signal(signum)


def _on_sweep_signal(signum: int, _frame: object) -> None:
    first = stop_signal() is None
    request_stop(signum)
    if first:
        log.warning(
            "received %s: the running jobs save and stop, no new job starts", signal.Signals(signum).name
        )
        forward_to_children(signal.SIGINT)  # SIGINT: what idle workers ignore and jobs handle


def install_sweep_handlers(jobs_in_this_process: bool) -> dict:
    """The sweep process's handlers (see the module docstring); returns the ones they replace."""
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _on_sweep_signal)}
    sigint = _on_sweep_signal if jobs_in_this_process else signal.SIG_IGN
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, sigint)
    return previous


def restore_handlers(previous: dict) -> None:
    for s, handler in previous.items():
        signal.signal(s, signal.SIG_DFL if handler is None else handler)


def _stop_job(signum: int, _frame: object) -> None:
    raise RunInterrupted(f"stopped by {signal.Signals(signum).name}; nothing to save yet", signum)


@contextlib.contextmanager
def job_signal_handlers() -> Iterator[None]:
    """For one job: SIGINT and SIGTERM stop it at once (a training run's lifecycle replaces these with
    its own while it trains, and saves first)."""
    previous = {s: signal.signal(s, _stop_job) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        restore_handlers(previous)
