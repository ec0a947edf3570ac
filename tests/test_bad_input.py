"""Bad input, as a new user types it: every case ends with one ``error:`` line naming the value (and the
usage line where the command line was at fault), exit status 2, no traceback, and the tree unchanged.

The scripts run in this process (``precheck.start`` with the Hydra ``main`` of train.py / merge.py, as
``python train.py ...`` does), so the table costs seconds, not a Python start-up per case; a few
cases run as real subprocesses at the end to check the same from outside.
"""

from __future__ import annotations

import json
import math
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MERGE_RUN_OVERRIDES, MERGE_SELECT, PROJECT_ROOT
from safetensors.torch import load_file, save_file

from orthoreg_pl.utils.io import sha256_file

QS_TRAIN = ["experiment=quickstart"]
QS_MERGE = [
    "experiment=quickstart_addition",
    "mode=standard_ortho",
    "tasks=[Digits,Shapes]",
    "protocol.alphas=[0,1]",
    MERGE_SELECT,
]
QS_NEGATION = ["experiment=quickstart_negation", *QS_MERGE[1:]]

# (case id, script, arguments, words the error line must hold)
COMMAND_LINE_CASES = [
    # fine-tuning values (configs/ortho, optim, data, mode, trainer; config/rules.py)
    ("lam-abc", "train", ["mode=standard_ortho", "ortho.lam=abc"], ["ortho.lam='abc'", "λ >= 0"]),
    ("lam-negative", "train", ["mode=standard_ortho", "ortho.lam=-1"], ["ortho.lam=-1", ">= 0"]),
    ("lam-inf", "train", ["mode=standard_ortho", "ortho.lam=inf"], ["ortho.lam=inf"]),
    ("lr-negative", "train", ["optim.lr=-1"], ["optim.lr=-1", "> 0"]),
    ("lr-zero", "train", ["optim.lr=0"], ["optim.lr=0", "> 0"]),
    ("lr-word", "train", ["optim.lr=fast"], ["optim.lr='fast'"]),
    ("lr-empty", "train", ["optim.lr="], ["optim.lr=''"]),
    ("weight-decay", "train", ["optim.weight_decay=-0.1"], ["optim.weight_decay=-0.1", ">= 0"]),
    ("betas-range", "train", ["optim.betas=[0.9,1.5]"], ["optim.betas=[0.9, 1.5]", "[0, 1)"]),
    ("betas-length", "train", ["optim.betas=[0.9]"], ["optim.betas=[0.9]", "[beta1, beta2]"]),
    ("eps-zero", "train", ["optim.eps=0"], ["optim.eps=0"]),
    ("warmup-negative", "train", ["optim.warmup_steps=-5"], ["optim.warmup_steps=-5", "integer >= 0"]),
    ("warmup-fraction", "train", ["optim.warmup_steps=1.5"], ["optim.warmup_steps=1.5", "integer"]),
    ("batch-zero", "train", ["data.batch_size=0"], ["data.batch_size=0", "integer >= 1"]),
    ("batch-word", "train", ["data.batch_size=big"], ["data.batch_size='big'"]),
    ("eval-batch", "train", ["data.eval_batch_size=-1"], ["data.eval_batch_size=-1"]),
    ("workers", "train", ["data.num_workers=-2"], ["data.num_workers=-2", ">= 0"]),
    ("train-scale", "train", ["data.train_scale=[0.5,0.2]"], ["data.train_scale=[0.5, 0.2]", "low <= high"]),
    ("interpolation", "train", ["data.preprocess_overrides.interpolation=cubic"], ["'cubic'", "bicubic"]),
    ("resize-mode", "train", ["data.preprocess_overrides.resize_mode=fit"], ["'fit'", "shortest"]),
    ("mean-length", "train", ["data.preprocess_overrides.mean=[0.5,0.5]"], ["mean=[0.5, 0.5]", "three"]),
    ("std-zero", "train", ["data.preprocess_overrides.std=[0,1,1]"], ["std=[0, 1, 1]", "> 0"]),
    ("size-zero", "train", ["data.preprocess_overrides.size=0"], ["size=0"]),
    ("preprocess-key", "train", ["+data.preprocess_overrides.gamma=2"], ["gamma", "keys among"]),
    ("eval-cache-word", "train", ["data.eval_cache=maybe"], ["data.eval_cache='maybe'", "true or false"]),
    ("train-cache", "train", ["data.train_cache=notabool"], ["data.train_cache='notabool'", "true or false"]),
    ("lora-rank", "train", ["mode=lora_attn", "mode.module.rank=0"], ["mode.module.rank=0", "LoRA rank"]),
    ("lora-alpha", "train", ["mode=lora_attn", "mode.module.alpha=0"], ["mode.module.alpha=0", "> 0"]),
    ("penalty-norm", "train", ["ortho.norm=l1"], ["ortho.norm='l1'", "fro_squared"]),
    ("penalty-gram", "train", ["ortho.gram=rows"], ["ortho.gram='rows'", "min_side"]),
    ("precision", "train", ["trainer.precision=fp8"], ["trainer.precision='fp8'", "bf16-mixed"]),
    (
        "matmul-precision",
        "train",
        ["trainer.matmul_precision=tf32"],
        ["trainer.matmul_precision='tf32'", "highest"],
    ),
    (
        "matmul-precision-merge",
        "merge",
        ["trainer.matmul_precision=fast"],
        ["'fast'", "highest, high or medium"],
    ),
    ("devices-zero", "train", ["trainer.devices=0"], ["trainer.devices=0"]),
    ("accelerator", "train", ["trainer.accelerator=quantum"], ["trainer.accelerator='quantum'", "cuda"]),
    ("max-steps", "train", ["trainer.max_steps=0"], ["trainer.max_steps=0"]),
    ("accumulate", "train", ["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches=0"]),
    ("clip-algorithm", "train", ["trainer.gradient_clip_algorithm=max"], ["'max'", "norm or value"]),
    ("limit-batches", "train", ["trainer.limit_train_batches=1.5"], ["trainer.limit_train_batches=1.5"]),
    ("seed-word", "train", ["seed=abc"], ["seed='abc'", "integer"]),
    ("resume-word", "train", ["resume=perhaps"], ["resume='perhaps'", "true or false"]),
    ("objective-direction", "train", ["objective.direction=up"], ["objective.direction='up'", "maximize"]),
    ("checkpoint-every", "train", ["callbacks.checkpoint.every_n_train_steps=0"], ["every_n_train_steps=0"]),
    (
        "objective-metric-train",
        "train",
        ["objective.metric=nonexistent_metric"],
        ["objective.metric='nonexistent_metric'", "accuracy/finetuned/val"],
    ),
    # a key given twice (Hydra would keep the last without a word), a key nothing reads
    (
        "key-twice",
        "train",
        ["dataset=shapes", "dataset=colors"],
        ["dataset is given twice", "dataset=colors"],
    ),
    ("key-twice-merge", "merge", ["seed=0", "seed=1"], ["seed is given twice", "seed=1"]),
    ("added-key-train", "train", ["+foo=1"], ["+foo=1 adds foo", "nothing reads"]),
    ("added-key-merge", "merge", ["+foo=1"], ["+foo=1 adds foo", "nothing reads"]),
    # Hydra's own composition errors: kept, on one line
    ("mode-unknown", "train", ["mode=foo"], ["mode/foo", "standard_ortho"]),
    ("dataset-unknown", "train", ["dataset=cifar"], ["dataset/cifar", "digits"]),
    ("model-unknown", "train", ["model=vit_h14"], ["model/vit_h14", "vit_b32"]),
    ("key-unknown", "train", ["optim.learning_rate=1"], ["optim.learning_rate"]),
    ("override-syntax", "train", ["optim.lr=[1"], ["optim.lr=[1"]),
    ("experiment-unknown", "train", ["experiment=nope"], ["experiment/nope"]),
    (
        "merge-experiment",
        "train",
        ["experiment=quickstart_addition"],
        ["merge experiment", "python merge.py"],
    ),
    (
        "sweep-one-bad-job",
        "train",
        ["-m", "mode=standard_ortho", "ortho.lam=0.1,-1"],
        ["ortho.lam=-1", "in the job"],
    ),
    # merging values (configs/protocol, merge_method, tasks)
    (
        "alphas-word",
        "merge",
        ["protocol.alphas=[abc]"],
        ["protocol.alphas=['abc']", "list of distinct numbers"],
    ),
    ("alphas-empty", "merge", ["protocol.alphas=[]"], ["protocol.alphas=[]", "non-empty"]),
    ("alphas-repeated", "merge", ["protocol.alphas=[0.5,0.5]"], ["protocol.alphas=[0.5, 0.5]", "distinct"]),
    ("tasks-empty", "merge", ["tasks=[]"], ["tasks=[]", "non-empty"]),
    ("tasks-unknown", "merge", ["tasks=[Digits,Nope]"], ["tasks=['Digits', 'Nope']", "Shapes"]),
    ("tasks-repeated", "merge", ["tasks=[Digits,Digits]"], ["tasks=['Digits', 'Digits']", "distinct"]),
    ("coefficients", "merge", ["merge_method.coefficients=[1,2,3]"], ["coefficients=[1, 2, 3]", "2 numbers"]),
    ("dare-rate", "merge", ["merge_method=dare", "merge_method.p=1"], ["merge_method.p=1", "[0, 1)"]),
    ("ties-k", "merge", ["merge_method=ties", "merge_method.k=0"], ["merge_method.k=0", "(0, 1]"]),
    ("objective-metric", "merge", ["protocol.objective.metric=accuracy"], ["'accuracy'", "val_norm"]),
    ("tolerance", "merge", ["reference_tolerance=-1"], ["reference_tolerance=-1"]),
    ("protocol-unknown", "merge", ["protocol=sum"], ["protocol/sum", "addition"]),
    ("method-unknown", "merge", ["merge_method=magic"], ["merge_method/magic", "ties"]),
    ("train-experiment", "merge", ["experiment=quickstart"], ["train experiment", "python train.py"]),
]
NEGATION_CASES = [
    ("threshold", "merge", [*QS_NEGATION, "protocol.threshold=1.5"], ["protocol.threshold=1.5", "(0, 1]"]),
    (
        "control-unknown",
        "merge",
        [*QS_NEGATION, "protocol.control=Nope"],
        ["protocol.control='Nope'", "Quadrants"],
    ),
]
NO_USAGE = {"merge-experiment", "train-experiment"}  # one line naming the right script instead


@pytest.fixture(scope="module")
def scripts():
    """Run train.py / merge.py as ``python <script>`` would (``__main__``), in this process."""
    return {kind: PROJECT_ROOT / f"{kind}.py" for kind in ("train", "merge")}


@pytest.fixture
def root(tmp_path, merge_runs, cache_dir, monkeypatch) -> Path:
    """A project root holding copies of the quickstart runs the merge cases select."""
    shutil.copytree(merge_runs / "runs", tmp_path / "runs" / "quickstart")
    monkeypatch.setenv("ORTHOREG_ROOT", str(tmp_path))
    monkeypatch.setenv("ORTHOREG_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    return tmp_path


@pytest.fixture(autouse=True)
def _restore_logging(restore_logging):
    """Every test here runs a script in-process (conftest.restore_logging)."""


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


def run(scripts, capsys, monkeypatch, kind: str, args: list[str]) -> tuple[int, str, str]:
    """(exit status, stderr, stdout) of ``python <kind>.py args`` run in this process."""
    monkeypatch.setattr(sys, "argv", [str(scripts[kind]), *args])
    try:
        runpy.run_path(str(scripts[kind]), run_name="__main__")
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    out = capsys.readouterr()
    return code, out.err, out.out


def assert_one_line_error(code: int, err: str, out: str, words: list[str]) -> str:
    assert code == 2, (code, err)
    assert "Traceback" not in err + out
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("usage:")]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


@pytest.mark.parametrize(
    "case, kind, args, words", [pytest.param(*c, id=c[0]) for c in COMMAND_LINE_CASES + NEGATION_CASES]
)
def test_bad_command_line(scripts, root, capsys, monkeypatch, case, kind, args, words):
    """A bad value on the command line: refused before any folder is made, with the script's usage."""
    base = (
        [] if any(a.startswith("experiment=") for a in args) else {"train": QS_TRAIN, "merge": QS_MERGE}[kind]
    )
    if not case.startswith("key-twice"):  # a key the case gives replaces the base's (a key twice is refused)
        given = {a.split("=")[0] for a in args}
        base = [a for a in base if a.split("=")[0] not in given]
    before = tree(root)
    code, err, out = run(scripts, capsys, monkeypatch, kind, [*base, *args])
    assert_one_line_error(code, err, out, words)
    if case not in NO_USAGE:
        assert err.rstrip().splitlines()[-1].startswith(f"usage: python {kind}.py")
    assert tree(root) == before


def test_missing_dataset_lists_the_tasks(scripts, root, capsys, monkeypatch):
    code, err, out = run(scripts, capsys, monkeypatch, "train", ["mode=standard"])
    line = assert_one_line_error(code, err, out, ["dataset is not set", "digits", "cars"])
    assert "dataset=<" in line


@pytest.mark.parametrize("kind", ["train", "merge"])
def test_help_pages(scripts, root, capsys, monkeypatch, kind):
    """--help exits 0 and opens with what the script does, its usage, its own groups and examples."""
    code, err, out = run(scripts, capsys, monkeypatch, kind, ["--help"])
    assert code == 0 and "Traceback" not in err + out
    head = out.split("== Config")[0]
    assert head.startswith(f"{kind}.py ") and f"usage: python {kind}.py" in head
    assert head.count(f"python {kind}.py ") >= 4  # usage + three examples
    groups = head.split("== Groups")[1].split("== Examples")[0]
    mine, theirs = ("dataset:", "protocol:") if kind == "train" else ("protocol:", "dataset:")
    assert mine in groups and theirs not in groups
    assert ("quickstart_addition" in groups) == (kind == "merge")


# ---- integrity: files changed after they were written ----------------------------------------------


def _merge_case(scripts, root, capsys, monkeypatch, words, args=()):
    before = tree(root)
    code, err, out = run(scripts, capsys, monkeypatch, "merge", [*QS_MERGE, *args])
    line = assert_one_line_error(code, err, out, words)
    assert tree(root) == before  # no report folder, no stray file
    return line


def _run_dir(root: Path, task: str) -> Path:
    return root / "runs" / "quickstart" / task


def _rewrite_meta(run_dir: Path, **changes) -> dict:
    meta = json.loads((run_dir / "meta.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (run_dir / "meta.json").write_text(json.dumps(meta))
    return meta


def test_scaled_task_vector_is_refused(scripts, root, capsys, monkeypatch):
    """×100 with its safetensors header intact: only the sha256 meta.json recorded tells."""
    path = _run_dir(root, "Shapes") / "task_vector.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    save_file({k: v * 100 for k, v in load_file(str(path)).items()}, str(path), metadata=header)
    _merge_case(scripts, root, capsys, monkeypatch, [str(path), "sha256", "changed"])


def test_truncated_task_vector_is_refused(scripts, root, capsys, monkeypatch):
    path = _run_dir(root, "Digits") / "task_vector.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    _merge_case(scripts, root, capsys, monkeypatch, [str(path)])


def test_nan_task_vector_is_refused(scripts, root, capsys, monkeypatch):
    """A NaN vector whose checksum matches (as if a run had published it): refused with file and key."""
    run_dir = _run_dir(root, "Digits")
    path = run_dir / "task_vector.safetensors"
    tensors = load_file(str(path))
    key = sorted(tensors)[0]
    tensors[key].view(-1)[0] = math.nan
    save_file(tensors, str(path))
    _rewrite_meta(run_dir, task_vector_sha256=sha256_file(path))
    _merge_case(scripts, root, capsys, monkeypatch, [str(path), key, "non-finite"])


@pytest.mark.parametrize("field", ["arch", "task"])
def test_meta_without_a_field_is_named(scripts, root, capsys, monkeypatch, field):
    run_dir = _run_dir(root, "Shapes")
    _rewrite_meta(run_dir, **{field: None})
    _merge_case(scripts, root, capsys, monkeypatch, [str(run_dir / "meta.json"), field])


def test_unreadable_meta_is_named(scripts, root, capsys, monkeypatch):
    meta = _run_dir(root, "Shapes") / "meta.json"
    meta.write_text("{not json")
    _merge_case(scripts, root, capsys, monkeypatch, [str(meta)])


def test_split_checksum_mismatch_is_refused(scripts, root, capsys, monkeypatch):
    run_dir = _run_dir(root, "Digits")
    _rewrite_meta(run_dir, split_checksum="0" * 16)
    _merge_case(scripts, root, capsys, monkeypatch, [str(run_dir), "split checksum", "0" * 16])


def test_eval_cache_pixels_changed_in_place(scripts, root, cache_dir, capsys, monkeypatch):
    """The eval cache's pixels overwritten after it was built: the sidecar's sha256 catches it."""
    import numpy as np

    private = root.parent / "private_cache"
    shutil.copytree(cache_dir, private, ignore=shutil.ignore_patterns("references"))
    monkeypatch.setenv("ORTHOREG_CACHE_DIR", str(private))
    images = sorted((private / "eval").glob("Digits-val-*.images.npy"))
    assert images, "the session cache holds the Digits val cache"
    array = np.load(images[0], mmap_mode="r+")
    array[0] = 255 - array[0]
    array.flush()
    del array
    _merge_case(scripts, root, capsys, monkeypatch, [images[0].name, "sha256", "delete"])


# ---- code in files: never executed, refused in one line --------------------------------------------


class _Payload:
    """Pickles to a call that would create ``marker``: loading it must not run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _evil_file(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    return path


def test_pickle_as_pretrained_weights(scripts, root, capsys, monkeypatch):
    marker = root.parent / "executed"
    evil = _evil_file(root.parent / "weights.pt", marker)
    before = tree(root)
    code, err, out = run(scripts, capsys, monkeypatch, "train", [*QS_TRAIN, f"model.pretrained={evil}"])
    line = assert_one_line_error(code, err, out, [str(evil), "refused", "it names getattr", "state_dict"])
    assert "weights_only=False" not in line and not marker.exists()
    assert tree(root) == before


def test_pickle_as_last_checkpoint(scripts, root, merge_runs, capsys, monkeypatch):
    """An unfinished run whose last.ckpt pickles a call: refused, nothing runs, the run is marked failed."""
    run_dir = root / "resumable"
    shutil.copytree(merge_runs / "runs" / "Digits", run_dir)
    _rewrite_meta(run_dir, status="interrupted", status_reason="test")
    marker = root.parent / "executed"
    _evil_file(run_dir / "last.ckpt", marker)
    before = set(tree(root))
    args = [*MERGE_RUN_OVERRIDES, "dataset=digits", f"hydra.run.dir={run_dir}"]
    code, err, out = run(scripts, capsys, monkeypatch, "train", args)
    line = assert_one_line_error(code, err, out, [str(run_dir / "last.ckpt"), "refused", "delete it"])
    assert "weights_only=False" not in line and not marker.exists()
    assert set(tree(root)) <= before | {"resumable/.lock"}
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "failed"


# ---- the same from outside: real processes ---------------------------------------------------------


def test_subprocess_exit_status_and_nothing_left(tmp_path):
    """Through ``python train.py``: exit 2, two lines on stderr, no run folder made."""
    env = {**os.environ, "ORTHOREG_ROOT": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "train.py", "experiment=quickstart", "data.batch_size=0"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: data.batch_size=0; expected an integer >= 1 (the global batch, split over the processes)",
        done.stderr.splitlines()[1],
    ] and done.stderr.splitlines()[1].startswith("usage: python train.py")
    assert list(tmp_path.iterdir()) == []


def test_unexpected_error_is_one_line_unless_asked(tmp_path, monkeypatch, capsys):
    """A bug (not bad input) is one line and exit 1; HYDRA_FULL_ERROR=1 shows its traceback."""
    from orthoreg_pl.runs import job

    def broken(cfg):
        raise ZeroDivisionError("division by zero")

    cfg = type("Cfg", (), {"paths": type("P", (), {"output_dir": str(tmp_path / "out")})})()
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(job, "in_multirun", lambda: False)
    with pytest.raises(SystemExit) as done:
        job.run_or_exit(broken, cfg, root=tmp_path)
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: unexpected ZeroDivisionError: division by zero (HYDRA_FULL_ERROR=1 shows the traceback)"
    ]
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ZeroDivisionError):
        job.run_or_exit(broken, cfg, root=tmp_path)


def test_every_torch_load_is_weights_only():
    """No torch.load in the package without weights_only=True (torch < 2.6 defaults to False)."""
    import re

    for path in (PROJECT_ROOT / "orthoreg_pl").rglob("*.py"):
        text = path.read_text()
        for found in re.finditer(r"torch\.load\(", text):
            call = text[found.start() : text.find(")", found.end()) + 1]
            assert "weights_only=True" in call, f"{path}: {call}"


HEAVY = ("torch", "lightning", "open_clip")
PROBE = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as done:
    print("exit", done.code, "heavy", sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["train.py"],
        ["train.py", "experiment=quickstart_clip", "dataset=digits", "optim.lr=-1"],
        ["train.py", "--help"],
        ["merge.py", "experiment=quickstart_clip_analysis", "protocol.xi.split=nope"],
        ["merge.py", "experiment=quickstart_clip_negation", "protocol.control=Nope"],
        ["merge.py", "--help"],
    ],
    ids=["train-no-dataset", "train-bad-lr", "train-help", "merge-analysis", "merge-negation", "merge-help"],
)
def test_usage_errors_and_help_come_before_torch_lightning_and_open_clip(argv):
    """A usage error or --help is answered before the heavy libraries load (benchmarks/cli.py times it)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    last = done.stdout.strip().splitlines()[-1]
    assert last == f"exit {0 if '--help' in argv else 2} heavy []", (last, done.stderr[-2000:])
