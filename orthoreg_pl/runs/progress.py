"""One live line per sweep: jobs done of the total, the running job, its step, and the time left.

Jobs report where they are (:func:`report_progress`: a small JSON file per process beside the
multirun's outcome log, written every few seconds at most), whatever the launcher runs them in; the
sweep's own process draws the line from those files and the outcome log (:class:`ProgressLine`, a
thread). On a terminal the line is redrawn in place; in a log file it is one line per change of job
and every ``LOG_EVERY_S`` seconds, so a log reads as a short history. ``ORTHOREG_PROGRESS_PREFIX``
(set by a campaign) names the stage the sweep is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from orthoreg_pl.runs.outcomes import LOG_ENV, read_outcomes

PREFIX_ENV = "ORTHOREG_PROGRESS_PREFIX"
SWEPT_ENV = "ORTHOREG_SWEPT_KEYS"  # the keys a sweep varies: what names its jobs on the line
REPORT_EVERY_S = 2.0  # a job writes its step at most this often
DRAW_EVERY_S = 1.0
LOG_EVERY_S = 30.0
_last_report = 0.0
_job: dict[str, Any] = {}  # this process's current job: label and start time


def progress_dir() -> Path | None:
    log_path = os.environ.get(LOG_ENV)
    return Path(log_path + ".progress") if log_path else None


def report_progress(
    label: str, step: int | None = None, total: int | None = None, force: bool = False
) -> None:
    """This process's job and step, for the sweep's line (nothing outside a multirun)."""
    global _last_report
    folder = progress_dir()
    now = time.monotonic()
    if _job.get("label") != label:
        _job.update(label=label, started=time.time())
        force = True
    if folder is None or (not force and now - _last_report < REPORT_EVERY_S):
        return
    _last_report = now
    state = {"label": label, "step": step, "total": total, "started": _job["started"], "pid": os.getpid()}
    with contextlib.suppress(OSError):  # progress is a courtesy: never a reason for a job to fail
        folder.mkdir(exist_ok=True)
        tmp = folder / f".{os.getpid()}.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, folder / f"{os.getpid()}.json")


def report_step(step: int, total: int | None) -> None:
    """The running job's step (a training callback's call; nothing outside a job of a multirun)."""
    if _job.get("label") is not None:
        report_progress(_job["label"], step, total)


def clear_progress() -> None:
    """This process's job has ended: it leaves the line."""
    _job.clear()
    folder = progress_dir()
    if folder is not None:
        (folder / f"{os.getpid()}.json").unlink(missing_ok=True)


def job_label(overrides: list[str]) -> str:
    """A job by what sets it apart in its sweep: ``dataset=digits mode=standard_ortho``."""
    swept = [k for k in os.environ.get(SWEPT_ENV, "").split(",") if k]
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    shown = [
        o for o, k in zip(overrides, keys) if (k in swept if swept else not k.startswith(("hydra", "paths.")))
    ]
    return " ".join(shown) or "job"


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    return str(dt.timedelta(seconds=int(round(seconds))))


class ProgressLine:
    """Draws the sweep's line from another thread until :meth:`stop` (see the module docstring)."""

    def __init__(self, name: str, total: int | None, stream: TextIO | None = None) -> None:
        self.name, self.total = name, total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweep-progress", daemon=True)
        self._last_text, self._last_key, self._last_logged = "", None, 0.0

    def start(self) -> ProgressLine:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.tty and self._last_text:
            self.stream.write("\n")
            self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(DRAW_EVERY_S):
            with contextlib.suppress(Exception):  # never let drawing break a sweep
                self.draw()

    def text(self) -> tuple[str, tuple]:
        """The line, and what it says apart from steps and clocks (a change of it is logged at once)."""
        log_path = os.environ.get(LOG_ENV)
        outcomes = read_outcomes(log_path) if log_path else []
        done = len(outcomes)
        trained = [o for o in outcomes if o["outcome"] == "finished" and o.get("seconds")]
        skipped = sum(o["outcome"] == "skipped" for o in outcomes)
        running = self._running()
        head = os.environ.get(PREFIX_ENV, "")
        total = f"{done}/{self.total}" if self.total else f"{done} done"
        parts = [
            f"{head + ' · ' if head else ''}{self.name} {total}"
            + (f" ({skipped} skipped)" if skipped else "")
        ]
        job_left = None
        for state in running:
            step, steps = state.get("step"), state.get("total")
            where = (
                f"step {step}/{steps}"
                if step is not None and steps
                else ("running" if step is None else f"step {step}")
            )
            parts.append(f"{state['label']}: {where}")
            if step and steps:
                elapsed = time.time() - state["started"]
                job_left = elapsed / step * (steps - step) if elapsed > 0 else None
        if job_left is not None:
            parts.append(f"job ETA {_clock(job_left)}")
        if self.total and trained:
            per_job = sum(o["seconds"] for o in trained) / len(trained)
            if job_left is None:  # no step to go by: a running job takes what the finished ones took
                job_left = sum(max(per_job - (time.time() - r["started"]), 0.0) for r in running)
            left = max(self.total - done - len(running), 0) * per_job + job_left
            parts.append(f"sweep ETA {_clock(left)}")
        parts.append(f"elapsed {_clock(time.time() - self.started)}")
        return " · ".join(parts), (done, tuple(state["label"] for state in running))

    def _running(self) -> list[dict[str, Any]]:
        folder = progress_dir()
        if folder is None or not folder.is_dir():
            return []
        states = []
        for path in folder.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(path.read_text())
                if state.get("label") is not None:
                    states.append(state)
        return sorted(states, key=lambda s: s.get("pid", 0))

    def draw(self) -> None:
        text, key = self.text()
        if self.tty:
            self.stream.write("\r\033[K" + text[: max(40, _width() - 1)])
            self.stream.flush()
        elif key != self._last_key or time.time() - self._last_logged >= LOG_EVERY_S:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_logged = time.time()
        self._last_text, self._last_key = text, key


def _width() -> int:
    with contextlib.suppress(OSError):
        return os.get_terminal_size(sys.stderr.fileno()).columns
    return 120
