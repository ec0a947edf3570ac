"""One stage of a campaign: a ``train.py -m`` or ``merge.py -m`` multirun in a child process, and
what it did (:class:`StageResult`: its jobs' outcomes and output folders, read from the outcome log
the campaign names for it, runs/outcomes.py)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from orthoreg_pl.campaign.plan import Multirun
from orthoreg_pl.errors import RunFailed, RunInterrupted
from orthoreg_pl.runs.outcomes import GROUP_ENV, LOG_ENV, read_outcomes
from orthoreg_pl.runs.progress import PREFIX_ENV

log = logging.getLogger(__name__)
SCRIPTS_DIR = Path(__file__).resolve().parents[2]  # where train.py and merge.py live
WANDB_AGENT_ENV = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH")


@dataclass
class StageResult:
    """What one multirun did: its jobs' outcomes (overrides, outcome, message, output_dir)."""

    label: str
    command: list[str]
    returncode: int
    seconds: float
    outcomes: list[dict] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(o["outcome"] == outcome for o in self.outcomes)


# The signals a campaign hands on to the multirun it runs: Ctrl-C, kill / scancel, SLURM's warnings.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


@contextlib.contextmanager
def forwarding(child: subprocess.Popen) -> Iterator[list[int]]:
    """While ``child`` runs, hand every signal of FORWARDED to its whole process group (its workers and
    their jobs included); the list yielded holds the signals received."""
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if not received:
            log.warning("campaign: received %s; the running jobs save and stop", signal.Signals(signum).name)
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def run_multirun(multirun: Multirun, jobs_dir: Path, group: str, stage: str = "") -> StageResult:
    """Run one multirun in a child process (its own process group, so a signal reaches it through
    the campaign, which then waits for it) and read back its jobs' outcomes."""
    started = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    outcome_log = jobs_dir / f"{multirun.label}-{started}-{os.getpid()}.jsonl"
    outcome_log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(SCRIPTS_DIR / multirun.script), "-m", *multirun.overrides]
    log.info("campaign: %s", shlex.join(command))
    # A W&B agent's run belongs to the campaign process; its jobs log runs of their own.
    env = {k: v for k, v in os.environ.items() if k not in WANDB_AGENT_ENV}
    env.update({LOG_ENV: str(outcome_log), GROUP_ENV: group, PREFIX_ENV: stage})
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, start_new_session=True)  # in the campaign's working directory
    with forwarding(child) as received:
        while True:
            try:
                returncode = child.wait()
                break
            except InterruptedError:  # pragma: no cover - wait() retries by itself (PEP 475)
                continue
    seconds = time.perf_counter() - start
    result = StageResult(multirun.label, command, returncode, seconds, read_outcomes(outcome_log))
    if received:
        name = signal.Signals(received[0]).name
        raise RunInterrupted(
            f"campaign stopped by {name} during {multirun.label} ({result.count('interrupted')} job(s) "
            "saved and interrupted); re-run the same command to resume",
            received[0],
        )
    if returncode != 0 and not result.outcomes:  # the multirun itself did not start
        raise RunFailed(
            f"{multirun.script} -m exited with status {returncode} before any job ran: {shlex.join(command)}"
        )
    return result
