"""Hostile input, faults and files of the second audit (issue #22), one test per case: each checks
the exit status, the one ``error:`` line (naming the file or key) and that nothing is left
half-written.

The scripts run in this process as ``python <script>.py`` would (runpy, as tests/test_bad_input.py
does), except where a memory limit or a fresh interpreter is the point (the zip bomb, the campaign).
The disk-full cases use a small tmpfs when the test can mount one (root) and otherwise inject
ENOSPC into the checkpoint's write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import runpy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import MERGE_RUN_OVERRIDES, MERGE_SELECT, PROJECT_ROOT, TINY
from hostile_files import deep_module_pickle, inflate_largest_record, save_pickled_module

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.runs.folder import read_meta
from orthoreg_pl.task_vectors import load_run
from orthoreg_pl.task_vectors.import_reference import main as import_main
from orthoreg_pl.utils.io import sha256_file

QS_MERGE = ["experiment=quickstart_addition", "mode=standard_ortho", "tasks=[Digits,Shapes]", MERGE_SELECT]
QS_TRAIN = [
    "experiment=quickstart",
    "dataset=digits",
    "mode=standard_ortho",
    "logger=none",
    "trainer.max_steps=12",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
    "callbacks.checkpoint.every_n_train_steps=5",
]


@pytest.fixture(autouse=True)
def _restore_logging(restore_logging):
    """Scripts run in-process here (conftest.restore_logging)."""


@pytest.fixture
def root(tmp_path, merge_runs, cache_dir, monkeypatch) -> Path:
    """A project root with copies of the quickstart runs, a private cache (a test may break it) and
    offline W&B."""
    shutil.copytree(merge_runs / "runs", tmp_path / "runs" / "quickstart")
    private = tmp_path.parent / f"{tmp_path.name}_cache"
    shutil.copytree(cache_dir, private, dirs_exist_ok=True)
    monkeypatch.setenv("ORTHOREG_ROOT", str(tmp_path))
    monkeypatch.setenv("ORTHOREG_CACHE_DIR", str(private))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    return tmp_path


def run(capsys, monkeypatch, kind: str, args: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of ``python <kind>.py args`` run in this process."""
    script = PROJECT_ROOT / f"{kind}.py"
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    try:
        runpy.run_path(str(script), run_name="__main__")
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    return code, capsys.readouterr().err


def error_line(err: str, *words: str) -> str:
    """The one ``error:`` line of ``err`` (no traceback), holding every word."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def leftovers(folder: Path) -> list[str]:
    """Temporary files or staging folders anywhere below ``folder``."""
    return [str(p) for p in folder.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith(".staging-")]


# ---- 1, 3, 8: the importer ---------------------------------------------------------------------------


def tiny_encoder():
    from orthoreg_pl.models import create_clip

    clip = create_clip(TINY, None, init_seed=0)
    del clip.transformer
    return clip


def mode_folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / "checkpoints_1993" / name / "CarsVal"
    folder.mkdir(parents=True)
    return folder.parent


_LIMITED_IMPORT = """
import resource, sys
from orthoreg_pl.task_vectors import import_reference
from orthoreg_pl.task_vectors.reference_formats import arch_layout
arch_layout("orthoreg-tiny-vit")  # every module imported and the layout built before the limit
with open("/proc/self/status") as status:
    size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[1]), resource.RLIM_INFINITY))
sys.exit(import_reference.main(sys.argv[2:]))
"""


def test_zip_bomb_is_refused_under_a_memory_limit(tmp_path):
    """A storage record inflating to 1 GiB where the pickle declares 12 MB, imported with 512 MiB of
    address space to spare: refused before inflating (the code before #22 read the record whole and
    needs twice its size)."""
    src = mode_folder(tmp_path, f"standard_1e-05_{TINY}")
    save_pickled_module(tiny_encoder(), src / "CarsVal" / "finetuned.pt")
    bomb = src / "CarsVal" / "zeroshot.pt"
    record = inflate_largest_record(src / "CarsVal" / "finetuned.pt", bomb, 1 << 30)
    assert bomb.stat().st_size < 8 << 20
    out = tmp_path / "out"
    args = ["--src", str(src), "--out", str(out), "--pretrained", "null"]
    done = subprocess.run(
        [sys.executable, "-c", _LIMITED_IMPORT, str(512 << 20), *args],
        cwd=PROJECT_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1
    error_line(done.stderr, str(bomb), record, f"declares {1 << 30} bytes", "refused")
    assert not out.exists()


def test_deeply_nested_module_records_are_refused(tmp_path, capsys):
    """200,000 nested module records (a RecursionError before #22): one line with the bound."""
    src = mode_folder(tmp_path, f"standard_1e-05_{TINY}")
    deep_module_pickle(src / "CarsVal" / "zeroshot.pt", 200_000)
    save_pickled_module(tiny_encoder(), src / "CarsVal" / "finetuned.pt")
    out = tmp_path / "out"
    assert import_main(["--src", str(src), "--out", str(out), "--pretrained", "null"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    error_line(err, str(src / "CarsVal" / "zeroshot.pt"), "nest deeper than 100 levels")
    assert not out.exists()


def attention_folder(tmp_path: Path, change) -> tuple[Path, dict]:
    """An attention-only (linear-2) mode folder whose checkpoints ``change`` rewrites (dtype, values)."""
    src = mode_folder(tmp_path, f"linear-2_1e-05_{TINY}")
    zeroshot = {"model." + k: v.detach() for k, v in tiny_encoder().named_parameters()}
    finetuned = {
        k: v + 0.01 if k.endswith(("in_proj_weight", "out_proj.weight")) else v.clone()
        for k, v in zeroshot.items()
    }
    zeroshot, finetuned = change(zeroshot), change(finetuned)
    torch.save(zeroshot, src / "CarsVal" / "linear-2_zeroshot.pt")
    torch.save(finetuned, src / "CarsVal" / "linear-2_finetuned.pt")
    return src, finetuned


def test_nan_checkpoint_is_not_published(tmp_path, capsys):
    def with_nan(state):
        key = "model.visual.transformer.resblocks.0.attn.in_proj_weight"
        state[key] = state[key].clone()
        state[key][0, 0] = math.nan
        return state

    src, _ = attention_folder(tmp_path, with_nan)
    out = tmp_path / "out"
    assert import_main(["--src", str(src), "--out", str(out), "--pretrained", "null"]) == 2
    error_line(capsys.readouterr().err, str(src / "CarsVal"), "resblocks.0.attn.in_proj_weight", "non-finite")
    assert not out.exists()


def test_integer_checkpoint_is_refused(tmp_path, capsys):
    src, _ = attention_folder(tmp_path, lambda s: {k: (v * 1000).to(torch.int32) for k, v in s.items()})
    out = tmp_path / "out"
    assert import_main(["--src", str(src), "--out", str(out), "--pretrained", "null"]) == 2
    error_line(capsys.readouterr().err, "linear-2_zeroshot.pt", "is int32", "expected floating-point")
    assert not out.exists()


def test_half_precision_checkpoint_is_imported_with_a_note(tmp_path, capsys):
    src, finetuned = attention_folder(tmp_path, lambda s: {k: v.half() for k, v in s.items()})
    out = tmp_path / "out"
    assert import_main(["--src", str(src), "--out", str(out), "--pretrained", "null"]) == 0
    printed = capsys.readouterr().out
    assert "float16" in printed and "recorded in meta.json" in printed
    (run_dir,) = [p.parent for p in out.rglob("meta.json")]
    imported = read_meta(run_dir)["imported_from"]
    assert imported["precision"] == "float16" and "float16" in imported["precision_note"]
    vector = load_run(run_dir)
    assert all(t.dtype == torch.float32 for t in vector.tensors.values())
    assert leftovers(out) == []


# ---- 2: checkpoints on a full disk, a truncated checkpoint ---------------------------------------------


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[bool]:
    """A tmpfs of ``size`` mounted on ``folder`` (True), or nothing when this process cannot mount (False)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = (
        shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def inject_enospc(monkeypatch, after_writes: int = 1) -> None:
    """The checkpoint writes after the first ``after_writes`` stop half-way with ENOSPC, as a full disk does."""
    from orthoreg_pl.training import checkpoint_io

    done = {"writes": 0}

    class HalfWrite:
        def __init__(self, path, mode):
            self.file = open(path, mode)  # noqa: SIM115

        def write(self, data):
            done["writes"] += 1
            if done["writes"] <= after_writes:
                return self.file.write(data)
            self.file.write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(checkpoint_io, "open", HalfWrite, raising=False)


def run_dir_of(root: Path) -> Path:
    (meta,) = list((root / "runs" / "quickstart").rglob("meta.json"))
    return meta.parent


def assert_failed_at_full_disk(code: int, err: str, root: Path, kept_step: int | None) -> Path:
    """Exit 1, one line naming last.ckpt and the bytes it needs; the run marked failed with that reason;
    the previous checkpoint whole (``kept_step``) or none at all, never a part; no temporary file left."""
    run_dir = run_dir_of(root)
    ckpt = run_dir / "last.ckpt"
    assert code == 1, err
    line = error_line(err, f"cannot write checkpoint {ckpt}", "bytes", "free space")
    meta = read_meta(run_dir)
    assert meta["status"] == "failed" and line.removeprefix("error: ") in meta["status_reason"]
    if kept_step is None:
        assert not ckpt.exists()
    else:
        assert torch.load(ckpt, weights_only=True)["global_step"] == kept_step  # the previous one, whole
    assert leftovers(run_dir) == []
    return run_dir


def test_full_disk_leaves_no_partial_checkpoint(tmp_path, cache_dir, capsys, monkeypatch):
    """The first checkpoint (1.4 MB) on a 1 MB disk: a tmpfs under the runs folder when one can be
    mounted, else ENOSPC injected into the write (before #22: a 1.0 MB last.ckpt under its real name,
    status running, an OSError naming no file). Freed, the same command trains the run to the end."""
    monkeypatch.setenv("ORTHOREG_ROOT", str(tmp_path))
    monkeypatch.setenv("ORTHOREG_CACHE_DIR", str(cache_dir))
    with small_disk(tmp_path / "runs", "1000k") as mounted:
        if not mounted:
            inject_enospc(monkeypatch, after_writes=0)
        code, err = run(capsys, monkeypatch, "train", QS_TRAIN)
        assert_failed_at_full_disk(code, err, tmp_path, kept_step=None)
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=16m", str(tmp_path / "runs")], check=True)
        else:
            monkeypatch.undo()
            monkeypatch.setenv("ORTHOREG_ROOT", str(tmp_path))
            monkeypatch.setenv("ORTHOREG_CACHE_DIR", str(cache_dir))
        code, err = run(capsys, monkeypatch, "train", QS_TRAIN)
        assert code == 0, err
        meta = read_meta(run_dir_of(tmp_path))
        assert meta["status"] == "finished" and meta["steps"] == 12


def test_disk_full_midway_keeps_the_previous_checkpoint(tmp_path, cache_dir, capsys, monkeypatch):
    """ENOSPC half-way through writing the second checkpoint (the room looked sufficient beforehand):
    last.ckpt stays the first one, whole."""
    monkeypatch.setenv("ORTHOREG_ROOT", str(tmp_path))
    monkeypatch.setenv("ORTHOREG_CACHE_DIR", str(cache_dir))
    inject_enospc(monkeypatch, after_writes=1)
    code, err = run(capsys, monkeypatch, "train", QS_TRAIN)
    assert_failed_at_full_disk(code, err, tmp_path, kept_step=5)


def test_truncated_checkpoint_is_named_and_resume_false_starts_over(
    tmp_path, merge_runs, cache_dir, capsys, monkeypatch
):
    """A last.ckpt cut short (by anything): one line naming it and saying resume=false; that starts over."""
    monkeypatch.setenv("ORTHOREG_ROOT", str(tmp_path))
    monkeypatch.setenv("ORTHOREG_CACHE_DIR", str(cache_dir))
    run_dir = tmp_path / "run"
    shutil.copytree(merge_runs / "runs" / "Digits", run_dir)
    meta = read_meta(run_dir)
    (run_dir / "meta.json").write_text(json.dumps({**meta, "status": "interrupted"}))
    torch.save({"state_dict": {}, "global_step": 1}, run_dir / "last.ckpt")
    data = (run_dir / "last.ckpt").read_bytes()
    (run_dir / "last.ckpt").write_bytes(data[: len(data) * 2 // 3])
    args = [*MERGE_RUN_OVERRIDES, "dataset=digits", f"hydra.run.dir={run_dir}"]
    code, err = run(capsys, monkeypatch, "train", args)
    assert code == 2
    error_line(err, f"checkpoint {run_dir / 'last.ckpt'} is unreadable", "resume=false")
    assert read_meta(run_dir)["status"] == "failed"
    code, err = run(capsys, monkeypatch, "train", [*args, "resume=false"])
    assert code == 0, err
    assert read_meta(run_dir)["status"] == "finished"


def test_leftovers_of_a_killed_publish_are_removed_by_the_next_job(
    tmp_path, merge_runs, cache_dir, capsys, monkeypatch
):
    """A SIGKILL while the task vector was written leaves .task_vector.safetensors.*.tmp: the next job
    that takes the folder removes it."""
    monkeypatch.setenv("ORTHOREG_ROOT", str(tmp_path))
    monkeypatch.setenv("ORTHOREG_CACHE_DIR", str(cache_dir))
    run_dir = tmp_path / "run"
    shutil.copytree(merge_runs / "runs" / "Digits", run_dir)
    meta = read_meta(run_dir)
    (run_dir / "meta.json").write_text(json.dumps({**meta, "status": "interrupted"}))
    (run_dir / "task_vector.safetensors").unlink()
    stale = run_dir / ".task_vector.safetensors.k1ll3d.tmp"
    stale.write_bytes(b"")
    args = [*MERGE_RUN_OVERRIDES, "dataset=digits", f"hydra.run.dir={run_dir}", "resume=false"]
    code, err = run(capsys, monkeypatch, "train", args)
    assert code == 0, err
    assert not stale.exists() and leftovers(run_dir) == []
    assert read_meta(run_dir)["status"] == "finished"


# ---- 4, 7, 9, 10: merges -------------------------------------------------------------------------------


def test_edited_references_cache_is_refused_then_rebuilt(root, capsys, monkeypatch):
    """An accuracy edited to 0.99 in .cache/references: refused naming the file; deleted, it is measured again."""
    cache = Path(os.environ["ORTHOREG_CACHE_DIR"]) / "references"
    shutil.rmtree(
        cache, ignore_errors=True
    )  # only this merge's references (the session's cache holds others)
    code, err = run(capsys, monkeypatch, "merge", [*QS_MERGE, "protocol.alphas=[0,1]"])
    assert code == 0, err
    vector = sha256_file(root / "runs" / "quickstart" / "Digits" / "task_vector.safetensors")
    (entry,) = [  # the fine-tuned Digits val reference
        p
        for p in cache.glob("Digits-val-*.json")
        if json.loads(p.read_text())["key"]["weights"].endswith(vector)
    ]
    stored = json.loads(entry.read_text())
    measured = stored["accuracy"]
    entry.write_text(json.dumps({**stored, "accuracy": 0.99}))
    reports = root / "reports"
    before = tree(reports)
    code, err = run(capsys, monkeypatch, "merge", [*QS_MERGE, "protocol.alphas=[0,0.5,1]"])
    assert code == 2
    error_line(err, f"references cache {entry}", "sha256", "delete it")
    assert tree(reports) == before  # no report folder left behind
    entry.unlink()
    code, err = run(capsys, monkeypatch, "merge", [*QS_MERGE, "protocol.alphas=[0,0.5,1]"])
    assert code == 0, err
    assert json.loads(entry.read_text())["accuracy"] == measured


def test_edited_head_and_quickstart_caches_are_refused_then_rebuilt(tmp_path):
    """The other tensor caches record their sha256 too: a zero-shot head scaled ×2 and quickstart pixels
    changed in place (their safetensors headers intact) are refused naming the file; deleted, rebuilt."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from orthoreg_pl.data.quickstart import cached_arrays
    from orthoreg_pl.models import create_clip, load_or_build_head

    def edit(path: Path, change) -> None:
        with safe_open(str(path), framework="pt") as f:
            header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        save_file({k: change(v) for k, v in tensors.items()}, str(path), metadata=header)

    clip = create_clip(TINY, None)
    args = (TINY, "random-init-seed0", "Shapes", ["a", "b"], ["a photo of {c}."], tmp_path)
    head = load_or_build_head(clip, *args)
    (path,) = (tmp_path / "heads").glob("*.safetensors")
    edit(path, lambda t: 2 * t)
    with pytest.raises(OrthoRegError, match=f"{re.escape(str(path))} does not match the sha256"):
        load_or_build_head(None, *args)
    path.unlink()
    assert torch.equal(load_or_build_head(clip, *args), head)

    def make():
        images = torch.arange(4 * 8 * 8 * 3, dtype=torch.uint8).reshape(4, 8, 8, 3).numpy()
        return images, torch.arange(4).numpy(), images[:2], torch.arange(2).numpy()

    first = cached_arrays(tmp_path, "Toy", make)
    (data,) = (tmp_path / "quickstart").glob("Toy-*.safetensors")
    edit(data, lambda t: 255 - t if t.dtype == torch.uint8 else t)
    with pytest.raises(OrthoRegError, match=f"{re.escape(str(data))} does not match the sha256"):
        cached_arrays(tmp_path, "Toy", make)
    data.unlink()
    assert all(torch.equal(first[k], v) for k, v in cached_arrays(tmp_path, "Toy", make).items())


def test_unwritable_reports_folder_is_found_first(root, capsys, monkeypatch):
    """A read-only reports folder: one line naming it before anything is evaluated (a read-only tmpfs
    when one can be mounted, else a folder this process may not write)."""
    reports = root / "reports"
    reports.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(reports)], capture_output=True
    ).returncode == 0 if shutil.which("mount") else False  # fmt: skip
    try:
        if not mounted:
            import orthoreg_pl.utils.io as io_module

            real = os.access
            monkeypatch.setattr(
                io_module.os, "access", lambda p, m: False if Path(p) == reports else real(p, m)
            )
        code, err = run(capsys, monkeypatch, "merge", QS_MERGE)
        assert code == 2
        error_line(err, "paths.reports_dir", str(reports), "cannot be written")
        assert "usage: python merge.py" in err
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(reports)], capture_output=True)
    assert list(reports.iterdir()) == []


@pytest.mark.parametrize(
    "protocol, args",
    [
        ("addition", [*QS_MERGE, "protocol.alphas=[-1,2,1000]"]),
        ("negation", ["experiment=quickstart_negation", *QS_MERGE[1:], "protocol.alphas=[0,-0.5]"]),
    ],
)
def test_negative_alphas_are_refused(root, capsys, monkeypatch, protocol, args):
    before = tree(root)
    code, err = run(capsys, monkeypatch, "merge", args)
    assert code == 2
    domain = "negation applies θ0 − α·τ" if protocol == "negation" else "to subtract, use protocol=negation"
    error_line(err, "protocol.alphas=", "numbers >= 0", domain)
    assert tree(root) == before


def test_ties_keeping_nothing_is_refused(root, capsys, monkeypatch):
    before = tree(root)
    code, err = run(capsys, monkeypatch, "merge", [*QS_MERGE, "merge_method=ties", "merge_method.k=1e-12"])
    assert code == 2
    error_line(err, "TIES", "merge_method.k=1e-12", "nothing would be merged")
    assert tree(root) == before


def test_merge_killed_while_writing_leaves_no_partial_report(root, capsys, monkeypatch):
    """Killed while the plot is drawn (after the tables, where the old code had written report.md and
    report.csv already): no report file in the folder; the next merge writes the whole report."""
    from orthoreg_pl.evaluation import report_files

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what SIGINT raises; nothing after it runs

    cache = os.environ["ORTHOREG_CACHE_DIR"]
    monkeypatch.setattr(report_files, "plot", killed)
    code, err = run(capsys, monkeypatch, "merge", [*QS_MERGE, "protocol.alphas=[0,1]"])
    assert code == 130 and "Traceback" not in err, err  # an interruption: one line, exit 130
    (folder,) = [p for p in (root / "reports").rglob("seed*") if p.is_dir()]
    assert not any((folder / name).exists() for name in ("report.md", "report.csv", "report.json"))
    assert leftovers(folder) == []
    stale = folder / ".report.json.x1.tmp"
    stale.write_text("{")  # what a SIGKILL inside write_json would leave
    (folder / "report.md").write_text("a part without report.json")
    monkeypatch.undo()
    monkeypatch.setenv("ORTHOREG_ROOT", str(root))
    monkeypatch.setenv("ORTHOREG_CACHE_DIR", cache)
    code, err = run(capsys, monkeypatch, "merge", [*QS_MERGE, "protocol.alphas=[0,1]"])
    assert code == 0, err
    assert {"report.md", "report.csv", "report.json", "alpha_curve.png"} <= {p.name for p in folder.iterdir()}
    assert "a part without" not in (folder / "report.md").read_text() and leftovers(folder) == []


# ---- 6: campaign names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../escape", "a/b", ".."])
def test_campaign_name_cannot_leave_campaigns_dir(tmp_path, name):
    root = tmp_path / "project"
    root.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "orthoreg_pl.campaign", "experiment=campaign_quickstart", f"name={name}",
         f"paths.root_dir={root}"],
        cwd=PROJECT_ROOT, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    error_line(done.stderr, f"name={name!r}", "campaign name")
    assert tree(tmp_path) == {"project"}  # no folder made, inside or outside, no job started
