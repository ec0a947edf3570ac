"""Self-check of ``tests/wandb_offline.py`` against the installed wandb (offline, no network, a few seconds).

Each run is made in its own process, as the project's runs are, with every wandb folder in ``tmp_path``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from wandb_offline import offline_run_dirs, read_offline_run

FIRST = """
import wandb
run = wandb.init(project="p", id="abc123", name="n", group="g", job_type="train",
                 config={"a": {"b": 1}, "lr": 0.1}, resume="allow")
for step in range(3):
    run.log({"train/loss": 1.0 / (step + 1), "trainer/global_step": step})
run.config.update({"later": "x"})
run.summary["finetuned/val_acc"] = 0.5
run.log({"tbl": wandb.Table(columns=["x", "y"], data=[[1, 2], [3, 4]])})
(art_file := __import__("pathlib").Path("f.txt")).write_text("hi")
art = wandb.Artifact("myart", type="dataset")
art.add_file(str(art_file))
run.log_artifact(art)
run.finish(exit_code=0)
"""

RESUME = """
import wandb
run = wandb.init(project="p", id="abc123", name="n", group="g", job_type="train",
                 config={"a": {"b": 1}, "lr": 0.1}, resume="allow")
for step in (3, 4):
    run.log({"train/loss": 1.0 / (step + 1), "trainer/global_step": step})
run.finish(exit_code=2)
"""


def _run_wandb(code: str, tmp: Path) -> None:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(tmp))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        env[var] = str(tmp / "wandb_home")
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp, env=env, check=True, timeout=60)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("wandb_offline")
    _run_wandb(FIRST, tmp)
    _run_wandb(RESUME, tmp)
    return offline_run_dirs(tmp)


def test_resume_offline_makes_a_second_folder_with_the_same_id(runs):
    assert len(runs) == 2
    # offline-run-<YYYYmmdd_HHMMSS>-abc123, with "-1" appended when both start within the same second
    assert all(d.name.startswith("offline-run-") and "-abc123" in d.name for d in runs)
    assert [read_offline_run(d).run_id for d in runs] == ["abc123", "abc123"]


def test_first_run_reads_back(runs):
    run = read_offline_run(runs[0])
    assert (run.name, run.group, run.job_type) == ("n", "g", "train")
    assert run.config == {"a": {"b": 1}, "lr": 0.1, "later": "x"}  # `later` came in a separate config record
    losses = [row["train/loss"] for row in run.history if "train/loss" in row]
    assert losses == pytest.approx([1.0, 0.5, 1 / 3])
    assert [row["_step"] for row in run.history] == [0, 1, 2, 3]
    assert [row["trainer/global_step"] for row in run.history[:3]] == [0, 1, 2]
    assert run.history[3]["tbl"]["_type"] == "table-file"  # a logged table is a nested dict in its row
    assert run.summary["finetuned/val_acc"] == 0.5
    assert run.summary["train/loss"] == pytest.approx(1 / 3)
    assert "_wandb" not in run.config and "_wandb" not in run.summary
    assert run.exit_code == 0
    assert run.artifacts == ["run-abc123-tbl", "myart"]


def test_resumed_run_holds_only_its_own_rows(runs):
    run = read_offline_run(runs[1])
    assert run.config == {"a": {"b": 1}, "lr": 0.1}  # only what this process set
    assert [row["trainer/global_step"] for row in run.history] == [3, 4]
    assert [row["_step"] for row in run.history] == [0, 1]  # offline resume restarts wandb's own _step
    assert "finetuned/val_acc" not in run.summary  # nothing carries over from the first folder
    assert run.exit_code == 2
    assert run.artifacts == []
