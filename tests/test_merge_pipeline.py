"""merge.py end to end on the quickstart: task vectors of real (fast_dev_run) runs -> report folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import MERGE_SELECT, PROJECT_ROOT, compose_config, path_overrides
from omegaconf import open_dict

from orthoreg_pl import OrthoRegError
from orthoreg_pl.evaluation.pipeline import run_merge
from orthoreg_pl.utils.io import sha256_file

TASKS = ["Digits", "Shapes"]
ALPHAS = "protocol.alphas=[0.0,0.5,1.0]"


@pytest.fixture
def runs(merge_runs):
    """Digits and Shapes fine-tuned for a few steps with standard_ortho (conftest.merge_runs)."""
    return merge_runs


def merge_cfg(runs_dir, cache_dir, out, *extra):
    cfg = compose_config(
        [
            f"tasks=[{','.join(TASKS)}]",
            ALPHAS,
            "mode=standard_ortho",
            *path_overrides(runs_dir, cache_dir, output_dir=out),
            f"paths.reports_dir={out.parent}",
            MERGE_SELECT,
            *extra,
        ],
        config_name="merge",
    )
    with open_dict(cfg):  # ${hydra:runtime.choices.merge_method} exists only inside the app
        cfg.merge_method_name = "task_arithmetic"
    return cfg


def test_addition_report(runs, cache_dir, tmp_path):
    out = tmp_path / "report"
    report = run_merge(merge_cfg(runs, cache_dir, out, "experiment=quickstart_addition"))
    saved = json.loads((out / "report.json").read_text())
    for key in (
        "schema_version", "config", "inputs", "alphas", "val_curves", "chosen_alpha", "per_task", "mean",
        "references", "split_checksums", "arch", "pretrained", "mode", "lam", "merge_method",
    ):  # fmt: skip
        assert key in saved, key
    assert saved["alphas"] == [0.0, 0.5, 1.0] and saved["chosen_alpha"] in saved["alphas"]
    for task in TASKS:
        run = runs / "runs" / task
        assert saved["inputs"][task]["checksum"] == sha256_file(run / "task_vector.safetensors")
        assert len(saved["val_curves"][task]) == 3
        row = saved["per_task"][task]
        assert row["norm"] == pytest.approx(row["abs"] / row["finetuned"])
        meta = json.loads((run / "meta.json").read_text())
        refs = saved["references"][task]  # measured by the merge itself, at its own precision
        assert row["finetuned"] == refs["finetuned"]["test"] and row["zeroshot"] == refs["zeroshot"]["test"]
        assert saved["val_curves"][task][0] == refs["zeroshot"]["val"]  # α=0 is θ0, exactly
        # same precision as the run: the run's own figures agree (meta holds float32 accuracies)
        assert refs["finetuned"]["test"] == pytest.approx(meta["accuracy"]["finetuned"]["test"], abs=1e-6)
        assert refs["zeroshot"]["val"] == pytest.approx(meta["accuracy"]["zeroshot"]["val"], abs=1e-6)
    check = saved["reference_check"]
    assert check["compared"] == 8 and check["beyond_tolerance"] == [] and check["max_abs_difference"] < 1e-6
    best = max(saved["val_curves"]["normalized mean"])
    assert saved["chosen_alpha"] == saved["alphas"][saved["val_curves"]["normalized mean"].index(best)]
    assert saved["config"]["protocol"]["name"] == "addition" and report["mean"] == saved["mean"]
    files = {p.name for p in out.iterdir()} - {".lock"}  # .lock: held by the merge that writes the folder
    assert files == {"report.json", "report.md", "report.csv", "alpha_curve.png"}
    assert "| mean |" in (out / "report.md").read_text()
    assert (out / "report.csv").read_text().splitlines()[0] == "task,zeroshot,finetuned,abs,norm"


def test_negation_report(runs, cache_dir, tmp_path):
    out = tmp_path / "report"
    run_merge(merge_cfg(runs, cache_dir, out, "experiment=quickstart_negation"))
    saved = json.loads((out / "report.json").read_text())
    assert saved["control"] == "Quadrants" and saved["threshold"] == 0.95
    zs = saved["control_zeroshot"]["val"]
    for task in TASKS:
        row = saved["per_task"][task]
        i = saved["alphas"].index(row["alpha"])
        assert saved["val_curves"][f"{task} control"][i] >= 0.95 * zs
        assert saved["val_curves"][f"{task} control"][0] == pytest.approx(zs)  # α = 0 is θ0


def test_missing_run_is_a_clear_error(runs, cache_dir, tmp_path):
    out = tmp_path / "report"
    cfg = merge_cfg(runs, cache_dir, out, "experiment=quickstart_addition", "tasks=[Digits,Colors]")
    with pytest.raises(OrthoRegError, match="Colors"):
        run_merge(cfg)
    assert not out.exists() or not any(out.iterdir())


def test_empty_alpha_grid_is_a_clear_error(runs, cache_dir, tmp_path):
    cfg = merge_cfg(runs, cache_dir, tmp_path / "r", "experiment=quickstart_addition", "protocol.alphas=[]")
    with pytest.raises(OrthoRegError, match="alphas"):
        run_merge(cfg)


def test_cli_truncated_task_vector(runs, cache_dir, tmp_path):
    """A truncated task_vector.safetensors: exit status != 0, the file named, no traceback, no report."""
    bad = tmp_path / "runs_copy"
    subprocess.run(["cp", "-r", str(runs / "runs"), str(bad)], check=True)
    tv = bad / "Shapes" / "task_vector.safetensors"
    tv.write_bytes(tv.read_bytes()[:100])
    out = tmp_path / "report"
    env = {**os.environ, "ORTHOREG_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run(
        [sys.executable, "merge.py", "experiment=quickstart_addition", "mode=standard_ortho", f"tasks=[{','.join(TASKS)}]",
         MERGE_SELECT, f"paths.runs_dir={bad}", f"paths.reports_dir={tmp_path}", f"hydra.run.dir={out}"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert str(tv) in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()


def test_single_task_reproduces_the_runs(runs, cache_dir, tmp_path):
    """θ0 + τ evaluated from the stored task vector scores what the run itself measured; the references
    land in the cache (one file each) and are reused by the next merge."""
    out = tmp_path / "report"
    report = run_merge(
        merge_cfg(runs, cache_dir, out, "experiment=quickstart_addition", "protocol=single_task")
    )
    cached = cache_dir / "references"
    assert len(list(cached.glob("Digits-*.json"))) >= 4  # zero-shot and fine-tuned, val and test
    for task in TASKS:
        meta = json.loads((runs / "runs" / task / "meta.json").read_text())
        row = report["per_task"][task]
        assert row["finetuned_test"] == pytest.approx(
            meta["accuracy"]["finetuned"]["test"], abs=1e-6
        )  # meta holds float32 accuracies; one sample is >= 2e-5
        assert row["finetuned_val"] == pytest.approx(
            meta["accuracy"]["finetuned"]["val"], abs=1e-6
        )  # meta holds float32 accuracies; one sample is >= 2e-5
        assert row["zeroshot_val"] == pytest.approx(
            meta["accuracy"]["zeroshot"]["val"], abs=1e-6
        )  # meta holds float32 accuracies; one sample is >= 2e-5
    stored = json.loads(
        (runs / "runs" / "orthoreg-tiny-vit" / "standard_ortho_lam0.1" / "single_task_seed0.json").read_text()
    )
    assert stored["per_task"] == report["per_task"]
    before = {p.name: p.stat().st_mtime_ns for p in cached.glob("*.json")}
    again = run_merge(
        merge_cfg(
            runs, cache_dir, tmp_path / "again", "experiment=quickstart_negation", "protocol.alphas=[0.0,1.0]"
        )
    )
    after = {p.name: p.stat().st_mtime_ns for p in cached.glob("*.json")}
    assert all(after[name] == mtime for name, mtime in before.items())  # reused, not rewritten
    assert any(name.startswith("Quadrants-") for name in after)  # the control's, cached too
    assert again["references"] == report["references"]


def test_objective_and_direction(runs, cache_dir, tmp_path):
    """merge.py returns what its protocol's objective names, in the stated direction: addition maximises
    the mean normalised validation accuracy at α*, negation minimises the negated tasks' validation accuracy."""
    addition = run_merge(merge_cfg(runs, cache_dir, tmp_path / "a", "experiment=quickstart_addition"))
    best = addition["val_curves"]["normalized mean"][addition["alphas"].index(addition["chosen_alpha"])]
    assert addition["objective"] == {"metric": "val_norm", "direction": "maximize", "value": best}
    negation = run_merge(merge_cfg(runs, cache_dir, tmp_path / "n", "experiment=quickstart_negation"))
    targets = [
        negation["val_curves"][f"{t} target"][negation["alphas"].index(negation["per_task"][t]["alpha"])]
        for t in TASKS
    ]
    assert (
        negation["objective"]["direction"] == "minimize" and negation["objective"]["metric"] == "target_val"
    )
    assert negation["objective"]["value"] == pytest.approx(sum(targets) / len(targets))


def test_same_report_is_skipped_and_settings_select_runs(runs, cache_dir, tmp_path):
    """A report with the same settings and inputs is not recomputed; a training setting named on the
    command line selects the runs that have it (and none have lr 0.002)."""
    out = tmp_path / "report"
    first = run_merge(merge_cfg(runs, cache_dir, out, "experiment=quickstart_addition", "optim.lr=0.001"))
    assert first["identity"]["selected_by"] == {
        "optim.lr": 0.001,
        "trainer.max_steps": 3,
        "trainer.limit_val_batches": 1,
    }
    again = run_merge(merge_cfg(runs, cache_dir, out, "experiment=quickstart_addition", "optim.lr=0.001"))
    assert getattr(again, "skipped", False) and again["mean"] == first["mean"]
    with pytest.raises(OrthoRegError, match=r"no finished run .*optim\.lr=0\.002"):
        run_merge(
            merge_cfg(runs, cache_dir, tmp_path / "other", "experiment=quickstart_addition", "optim.lr=0.002")
        )


def test_merge_logs_one_offline_wandb_run(runs, cache_dir, tmp_path, monkeypatch):
    """logger=wandb: one finished run per merge, job_type merge, its config, the α curves and report.json."""
    from wandb_offline import read_offline_runs

    for key in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(key, str(tmp_path / key.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "report"
    cfg = merge_cfg(runs, cache_dir, out, "experiment=quickstart_addition", "logger=wandb")
    report = run_merge(cfg)
    (run,) = read_offline_runs(out)
    assert run.run_id == f"test-{report['identity']['hash']}" and run.exit_code == 0
    assert run.config["config"]["protocol"]["name"] == "addition"
    assert run.summary["addition/objective"] == pytest.approx(report["objective"]["value"])
    assert f"report-{report['identity']['hash']}" in run.artifacts
    assert any("alpha_curves" in a for a in run.artifacts)


def test_wandb_mode_disabled_turns_the_wandb_logger_off(runs, cache_dir, tmp_path, monkeypatch):
    """WANDB_MODE=disabled, W&B's own switch, wins over the logger's offline default: no W&B folder is
    written and the environment still says disabled afterwards (Lightning's offline flag sets dryrun)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "report"
    report = run_merge(merge_cfg(runs, cache_dir, out, "experiment=quickstart_addition", "logger=wandb"))
    assert (out / "report.json").is_file() and report["objective"]["value"] > 0
    assert not list(out.rglob("wandb")) and os.environ["WANDB_MODE"] == "disabled"


def test_references_at_the_merges_precision(runs, cache_dir, tmp_path):
    """A run whose meta.json figures came from another precision (bf16-mixed training, here simulated by
    shifting them): the merge uses what it measures itself, so α = 0 equals the zero-shot reference
    exactly, and report.json lists the run's figures that differ beyond the tolerance."""
    copy = tmp_path / "runs_copy"
    shutil.copytree(runs / "runs", copy / "runs")
    meta_path = copy / "runs" / "Shapes" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["precision"] = "bf16-mixed"
    meta["accuracy"]["zeroshot"]["val"] += 0.0063  # 18.75 vs 18.12 in the bf16 reproduction
    meta_path.write_text(json.dumps(meta))
    report = run_merge(merge_cfg(copy, cache_dir, tmp_path / "report", "experiment=quickstart_addition"))
    for task in TASKS:
        assert report["val_curves"][task][0] == report["references"][task]["zeroshot"]["val"]
    (flagged,) = report["reference_check"]["beyond_tolerance"]
    assert flagged["task"] == "Shapes" and flagged["reference"] == "zeroshot" and flagged["split"] == "val"
    assert flagged["run_precision"] == "bf16-mixed"
    assert flagged["difference"] == pytest.approx(-0.0063, abs=1e-6)
