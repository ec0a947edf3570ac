"""End to end: train() on composed configs, the run folder it writes, and the ``train.py`` command line.

Every run is the tiny random-init ViT on the quickstart Digits task for one batch (fast_dev_run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, TINY, compose_config, path_overrides
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

from orthoreg_pl import OrthoRegError
from orthoreg_pl.data import carve_validation, load_task, split_checksum
from orthoreg_pl.models import create_clip
from orthoreg_pl.modules import MODES
from orthoreg_pl.task_vectors import load_task_vector
from orthoreg_pl.training.fit import Skipped, train

FAST = "trainer.fast_dev_run=true"
ALL_MODES = sorted(MODES)
ATTENTION_MODES = {"attn", "attn_ortho", "lora_attn", "lora_attn_ortho"}
META_FIELDS = {
    "task",
    "mode",
    "arch",
    "pretrained",
    "ortho",
    "split_checksum",
    "seed",
    "steps",
    "versions",
    "git_commit",
    "accuracy",
}


def quickstart_cfg(mode: str, tmp: Path, cache: Path, *extra: str):
    return compose_config(
        [
            "experiment=quickstart",
            "dataset=digits",
            f"mode={mode}",
            FAST,
            "logger=csv",
            *path_overrides(tmp, cache, output_dir=tmp / "run"),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    """One finished fast_dev_run per mode: {mode: (run folder, returned meta)}."""
    out = {}
    for mode in ALL_MODES:
        tmp = tmp_path_factory.mktemp(f"train_{mode}")
        meta = train(quickstart_cfg(mode, tmp, cache_dir))
        out[mode] = (tmp / "run", meta)
    return out


@pytest.fixture(scope="module")
def expected_tensors() -> dict[str, tuple[int, ...]]:
    """Task-vector keys and shapes known without the module: the tiny image tower's parameters."""
    return {f"visual.{n}": tuple(p.shape) for n, p in create_clip(TINY, None).visual.named_parameters()}


@pytest.mark.parametrize("mode", ALL_MODES)
def test_run_folder_task_vector(mode, runs, expected_tensors):
    """task_vector.safetensors: image-tower names and shapes, a real update, reloading bit-identically."""
    run_dir, meta = runs[mode]
    path = run_dir / "task_vector.safetensors"
    tv = load_task_vector(path)
    if mode in ATTENTION_MODES:  # the attention matrices only; LoRA stores the dense ΔW under the base name
        expected_tensors = {
            k: v
            for k, v in expected_tensors.items()
            if k.endswith(("attn.in_proj_weight", "attn.out_proj.weight"))
        }
    assert {k: tuple(v.shape) for k, v in tv.items()} == expected_tensors
    assert all(k.startswith("visual.") for k in tv)
    assert all(v.dtype == torch.float32 for v in tv.values())
    assert all(torch.count_nonzero(v) > 0 for v in tv.values())  # one AdamW step moves every parameter
    again, raw = load_task_vector(path), load_file(str(path))
    assert tv.keys() == again.keys() == raw.keys()
    assert all(torch.equal(tv[k], again[k]) and torch.equal(tv[k], raw[k]) for k in tv)
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["orthoreg"])
    assert header == {"arch": TINY, "pretrained": "random-init-seed0", "mode": mode, "task": "Digits"}
    assert meta["task_vector"] == {"tensors": len(tv), "parameters": sum(v.numel() for v in tv.values())}


@pytest.mark.parametrize("mode", ALL_MODES)
def test_run_folder_meta_and_config(mode, runs, cache_dir, missing_data_root):
    """meta.json records what is needed to reproduce and merge the run; config.yaml is the resolved config."""
    run_dir, returned = runs[mode]
    meta = json.loads((run_dir / "meta.json").read_text())
    assert META_FIELDS <= set(meta)
    assert meta["task"] == "Digits" and meta["mode"] == mode
    assert meta["arch"] == TINY and meta["pretrained"] == "random-init-seed0"
    lam = 0.1 if mode.endswith("_ortho") else 0.0  # the λ actually trained with
    assert meta["task_vector_space"] == ("tangent" if mode.startswith("linear") else "weight")
    assert (
        meta["ortho"]["lam"] == lam and meta["ortho"]["norm"] == "fro" and meta["ortho"]["gram"] == "min_side"
    )
    data = load_task("Digits", missing_data_root, cache_dir)
    train_idx, val_idx = carve_validation(len(data.train_pool))
    assert meta["split_checksum"] == split_checksum(train_idx, val_idx, len(data.test))
    assert meta["seed"] == 0 and meta["steps"] == 1
    assert isinstance(meta["versions"], dict) and meta["versions"]["torch"] == torch.__version__.split("+")[0]
    assert "git_commit" in meta
    for stage in ("zeroshot", "finetuned"):
        for split in ("val", "test"):
            assert 0.0 <= meta["accuracy"][stage][split] <= 1.0
    assert {k: returned[k] for k in returned} == {k: meta[k] for k in returned}
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert cfg.mode.name == mode and cfg.model.arch == TINY and cfg.dataset.name == "Digits"
    assert Path(cfg.paths.output_dir) == run_dir
    assert "${" not in (run_dir / "config.yaml").read_text()  # resolved
    assert list((Path(cache_dir) / "heads").glob(f"{TINY}__random-init-seed0__Digits__*.safetensors"))


def test_finished_run_is_skipped_not_overwritten(runs, tmp_path, cache_dir):
    """The same run again returns the finished run's meta without touching the folder; another
    configuration into the same folder is refused, naming what differs."""
    run_dir, meta = runs["standard_ortho"]
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}

    same = compose_config(same_overrides(run_dir, tmp_path, cache_dir))
    again = train(same)
    assert isinstance(again, Skipped) and again["identity"] == meta["identity"]
    other = compose_config([*same_overrides(run_dir, tmp_path, cache_dir), "optim.lr=0.002"])
    with pytest.raises(OrthoRegError, match=r"holds another run .*optim\.lr: 0\.001 there, 0\.002 here"):
        train(other)
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before


def same_overrides(run_dir: Path, tmp: Path, cache: Path) -> list[str]:
    return [
        "experiment=quickstart",
        "dataset=digits",
        "mode=standard_ortho",
        FAST,
        "logger=csv",
        *path_overrides(tmp, cache, output_dir=run_dir),
    ]


def test_unfinished_run_resumes_from_checkpoint(tmp_path, cache_dir):
    """A run whose status is not finished continues from its checkpoint and keeps its zero-shot scores
    (the mid-epoch SIGKILL / SIGTERM cases run as subprocesses in test_lifecycle.py)."""
    cfg = compose_config(
        [
            "experiment=quickstart",
            "dataset=digits",
            "mode=standard_ortho",
            "logger=csv",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "trainer.max_epochs=2",
            "callbacks.checkpoint.every_n_train_steps=3",
            *path_overrides(tmp_path, cache_dir, output_dir=tmp_path / "run"),
        ]
    )
    run_dir = tmp_path / "run"
    first = train(cfg)
    assert first["steps"] == 4 and first["status"] == "finished" and (run_dir / "last.ckpt").is_file()
    vector = load_task_vector(run_dir / "task_vector.safetensors")
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["status"] = "running"  # as if killed after the step-3 checkpoint
    meta["accuracy"]["zeroshot"] = {"val": 0.125, "test": 0.25}
    (run_dir / "meta.json").write_text(json.dumps(meta))
    second = train(cfg)
    assert not isinstance(second, Skipped)
    assert second["steps"] == 4 and second["epochs"] == 2  # one more step from step 3, not four from scratch
    assert second["accuracy"]["zeroshot"] == {"val": 0.125, "test": 0.25}  # read back, not re-evaluated
    again = load_task_vector(run_dir / "task_vector.safetensors")
    assert all(torch.equal(vector[k], again[k]) for k in vector)  # the resumed step is the same step


def test_logger_none_trains(tmp_path, cache_dir):
    """configs/logger/none.yaml is offered as an option, so a run without an experiment logger must work."""
    cfg = compose_config(
        [
            "experiment=quickstart",
            "dataset=digits",
            "mode=standard",
            "logger=none",
            "eval_zeroshot=false",
            "trainer.max_steps=1",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            *path_overrides(tmp_path, cache_dir, output_dir=tmp_path / "run"),
        ]
    )
    assert train(cfg)["steps"] == 1


def test_run_folder_files_get_umask_permissions(runs):
    """atomic_path promises the permissions open() would give; task vectors must be readable like meta.json."""
    run_dir, _ = runs["standard"]
    meta_mode = (run_dir / "meta.json").stat().st_mode & 0o777
    assert (run_dir / "task_vector.safetensors").stat().st_mode & 0o777 == meta_mode


# ---- the command line -------------------------------------------------------------------------------


def cli_env(cache: Path, tmp: Path) -> dict[str, str]:
    """The test's environment, minus anything that could redirect paths or change error output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "WANDB_", "ORTHOREG_"))}
    env.update(ORTHOREG_CACHE_DIR=str(cache), ORTHOREG_DATA_ROOT=str(tmp / "data"), WANDB_MODE="disabled")
    return env


def run_cli(args: list[str], cache: Path, tmp: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=PROJECT_ROOT,
        env=cli_env(cache, tmp),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


ERROR_CASES = {
    "unknown_dataset": (["dataset=nosuch"], ["nosuch", "digits", "mnist"]),
    "negative_lambda": (["dataset=digits", "mode=standard_ortho", "ortho.lam=-1"], ["ortho.lam=-1"]),
    "unknown_arch": (["dataset=digits", "model.arch=ViT-X-99"], ["ViT-X-99"]),
    "missing_data_root": (["dataset=mnist", "paths.data_root={tmp}/no_such_root"], ["{tmp}/no_such_root"]),
}


# The same bad λ, but into the default run-folder naming scheme (no hydra.run.dir).
NAMED_DIR_CASE = "negative_lambda_named_dir"


@pytest.fixture(scope="module")
def cli_errors(tmp_path_factory, cache_dir):
    """Run the failing command lines concurrently (each one mostly imports): {case: (result, run dir)}."""
    procs = {}
    cases = {**ERROR_CASES, NAMED_DIR_CASE: (ERROR_CASES["negative_lambda"][0], None)}
    for case, (args, _) in cases.items():
        tmp = tmp_path_factory.mktemp(f"cli_{case}")
        argv = ["experiment=quickstart", *(a.format(tmp=tmp) for a in args), f"paths.runs_dir={tmp}/runs"]
        if case != NAMED_DIR_CASE:
            argv.append(f"hydra.run.dir={tmp}/x")
        proc = subprocess.Popen(
            [sys.executable, "train.py", *argv],
            cwd=PROJECT_ROOT,
            env=cli_env(cache_dir, tmp),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs[case] = (proc, tmp)
    results = {}
    for case, (proc, tmp) in procs.items():
        out, err = proc.communicate(timeout=300)
        results[case] = (proc.returncode, out + err, tmp)
    return results


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_cli_bad_input_is_a_clear_error(case, cli_errors):
    """Bad input: non-zero exit, a message naming the value, no traceback, no run folder left behind."""
    returncode, output, tmp = cli_errors[case]
    assert returncode != 0, output
    for needle in ERROR_CASES[case][1]:
        assert needle.format(tmp=tmp) in output, output
    assert "Traceback" not in output
    assert not (tmp / "x").exists()
    assert not (tmp / "runs").exists()


def test_cli_bad_input_leaves_no_empty_run_tree(cli_errors):
    """With the default naming scheme, a run that never started must not leave runs/<arch>/<mode>/<task>/."""
    returncode, output, tmp = cli_errors[NAMED_DIR_CASE]
    assert returncode != 0 and "ortho.lam=-1" in output and "Traceback" not in output
    assert not list((tmp / "runs").glob(f"{TINY}/standard_ortho_lam-1/Digits/seed0*"))
    left = sorted(str(p.relative_to(tmp)) for p in (tmp / "runs").rglob("*"))
    assert left == [], left  # the runs root itself may stay; nothing below it


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, cache_dir):
    tmp = tmp_path_factory.mktemp("cli_run")
    args = [
        "experiment=quickstart",
        "dataset=digits",
        "mode=standard_ortho",
        FAST,
        f"paths.runs_dir={tmp}/runs",
        f"hydra.run.dir={tmp}/run",
    ]
    return run_cli(args, cache_dir, tmp), tmp


def test_cli_run_writes_run_folder(cli_run):
    result, tmp = cli_run
    assert result.returncode == 0, result.stdout + result.stderr
    meta = json.loads((tmp / "run" / "meta.json").read_text())
    assert meta["mode"] == "standard_ortho" and meta["ortho"]["lam"] == 0.1 and meta["steps"] == 1
    assert (tmp / "run" / "task_vector.safetensors").is_file() and (tmp / "run" / "config.yaml").is_file()
    assert not (tmp / "runs").exists()  # hydra.run.dir wins over the naming scheme


def test_cli_skips_finished_run(cli_run, cache_dir):
    """The same command again: exit 0, a line saying the run is skipped, the folder untouched."""
    result, tmp = cli_run
    assert result.returncode == 0
    meta_before = (tmp / "run" / "meta.json").read_bytes()
    again = run_cli(
        ["experiment=quickstart", "dataset=digits", "mode=standard_ortho", FAST, f"hydra.run.dir={tmp}/run"],
        cache_dir,
        tmp,
    )
    output = again.stdout + again.stderr
    assert again.returncode == 0 and "skipped:" in output and "Traceback" not in output
    assert (tmp / "run" / "meta.json").read_bytes() == meta_before


def test_cli_multirun_lambda_sweep(tmp_path, cache_dir):
    """``-m ortho.lam=0,1`` gives one run folder per λ, named by it, each recording its λ."""
    result = run_cli(
        [
            "-m",
            "experiment=quickstart",
            "dataset=digits",
            "mode=standard_ortho",
            "ortho.lam=0,1",
            FAST,
            f"paths.runs_dir={tmp_path}",
        ],
        cache_dir,
        tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    metas = sorted(tmp_path.glob("**/meta.json"))
    assert len(metas) == 2
    found = {}
    for path in metas:
        meta = json.loads(path.read_text())
        found[meta["ortho"]["lam"]] = path.parent.relative_to(tmp_path)
    hashes = {
        lam: json.loads((tmp_path / p / "meta.json").read_text())["identity"]["hash"]
        for lam, p in found.items()
    }
    assert found == {
        0.0: Path(TINY) / "standard_ortho_lam0" / "Digits" / f"seed0-{hashes[0.0]}",
        1.0: Path(TINY) / "standard_ortho_lam1" / "Digits" / f"seed0-{hashes[1.0]}",
    }
    assert "multirun: 2 jobs: 2 finished, 0 skipped, 0 failed" in result.stdout
