"""The multirun's own process (a Hydra callback, configs/hydra/*.yaml): it names the outcome log and
the W&B group, draws the sweep's progress line, turns Ctrl-C and SIGTERM into a clean stop, and at
the end prints the summary and exits with a status that says how the sweep went: 0, 1 if any job
failed, 128 + the signal if it was stopped.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from orthoreg_pl.runs.outcomes import GROUP_ENV, LOG_ENV, read_outcomes, summary_lines
from orthoreg_pl.runs.progress import SWEPT_ENV, ProgressLine
from orthoreg_pl.runs.stop import install_sweep_handlers, restore_handlers, stop_signal


def grid(config: DictConfig) -> tuple[int | None, list[str]]:
    """The number of jobs the basic sweeper's grid holds (None for another sweeper: Optuna's trials),
    and the keys it sweeps."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    except Exception:  # noqa: BLE001 - the line then names jobs by all their overrides
        return None, []
    swept = [o.key_or_group for o in parsed if o.is_sweep_override()]
    if "BasicSweeper" not in str(config.hydra.sweeper.get("_target_", "")):
        return None, swept
    try:
        (jobs,) = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # noqa: BLE001 - the line then counts without a total
        return None, swept
    return len(jobs), swept


class SweepSummary(Callback):
    """A caller that launches the multirun (the campaign) may name the log file itself: it sets
    ``ORTHOREG_SWEEP_LOG`` to a new file and reads the jobs' outcomes and output folders from it."""

    def __getstate__(self) -> dict:
        """Launchers that run jobs in other processes (joblib) send the callbacks along: the line's
        thread and the signal handlers stay in the sweep's own process."""
        return {k: v for k, v in self.__dict__.items() if k not in ("line", "handlers")}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        started = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        self.named_by_caller = bool(os.environ.get(LOG_ENV))
        if self.named_by_caller:
            self.path = Path(os.environ[LOG_ENV])
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(config.hydra.sweep.dir) / ".multirun"
            folder.mkdir(parents=True, exist_ok=True)
            self.path = folder / f"{config.hydra.job.name}_{started}_{os.getpid()}.jsonl"
        self.path.touch()
        os.environ[LOG_ENV] = str(self.path)
        os.environ.setdefault(GROUP_ENV, f"{config.hydra.job.name}-{started}")
        in_process = "BasicLauncher" in str(config.hydra.launcher.get("_target_", ""))
        self.handlers = install_sweep_handlers(jobs_in_this_process=in_process)
        total, swept = grid(config)
        os.environ[SWEPT_ENV] = ",".join(swept)
        self.line = ProgressLine(str(config.hydra.job.name), total).start()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.line.stop()
        restore_handlers(self.handlers)
        outcomes = read_outcomes(self.path)
        for line in summary_lines(outcomes):
            print(line, flush=True)
        stopped = stop_signal()
        if not self.named_by_caller:
            os.environ.pop(LOG_ENV, None)
        if stopped is not None:
            sys.exit(128 + stopped)
        if any(o["outcome"] in ("failed", "interrupted") for o in outcomes):
            sys.exit(1)
