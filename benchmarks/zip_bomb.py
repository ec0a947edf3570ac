"""Benchmark: peak memory and time of the importer on a zip bomb (issue #22, case 1).

Builds a standard-mode folder of the tiny model whose zeroshot.pt is a ``torch.save`` zip of a
pickled ImageEncoder with its largest storage record replaced by ``--inflate-gib`` GiB of zeros,
deflated (the pickle still declares the record's real size; level 1 gives a file of about 16 MB for
3 GiB), then runs ``python -m orthoreg_pl.task_vectors.import_reference`` on it in a child process
and reports the child's peak RSS (``/usr/bin/time``'s maximum resident set size, read from
``wait4``), its wall time, exit status and error line; first the same import of a clean folder (the
bomb's record left as it was) as the baseline. ``--code DIR`` runs another checkout's importer (e.g. ``git archive 4e66db3`` unpacked in
/tmp/old) with this environment, for a before/after figure.

    python benchmarks/zip_bomb.py [--inflate-gib 3] [--code /tmp/old]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hostile_files import inflate_largest_record, save_pickled_module  # noqa: E402

TINY = "orthoreg-tiny-vit"


def build(folder: Path, inflate: int | None) -> Path:
    """checkpoints_1993/standard_1e-05_<tiny>/CarsVal/{zeroshot.pt, finetuned.pt}; zeroshot.pt is the
    bomb unless ``inflate`` is None (a clean copy: the baseline)."""
    from orthoreg_pl.models import create_clip

    src = folder / "checkpoints_1993" / f"standard_1e-05_{TINY}"
    task = src / "CarsVal"
    task.mkdir(parents=True)
    clip = create_clip(TINY, None, init_seed=0)
    del clip.transformer
    save_pickled_module(clip, task / "finetuned.pt")
    if inflate is None:
        shutil.copy(task / "finetuned.pt", task / "zeroshot.pt")
    else:
        inflate_largest_record(task / "finetuned.pt", task / "zeroshot.pt", inflate, level=1)
    return src


def run(src: Path, out: Path, code: Path) -> dict:
    """One import in a child process: peak RSS (MiB), wall time, exit status, last stderr line."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "orthoreg_pl.task_vectors.import_reference"]
    command += ["--src", str(src), "--out", str(out), "--pretrained", "null"]
    start = time.perf_counter()
    child = subprocess.Popen(
        command, cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not the largest child's so far
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    lines = stderr.strip().splitlines() or [""]
    return {
        "peak_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        "wall_s": wall,
        "exit": child.returncode,
        "stderr_lines": len(lines),
        "last_line": lines[-1][:300],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inflate-gib", type=float, default=3.0)
    parser.add_argument(
        "--code", type=Path, default=ROOT, help="checkout whose importer runs (default: this one)"
    )
    args = parser.parse_args()
    print(f"code: {args.code}")
    for label, inflate in (("clean folder", None), ("bomb", int(args.inflate_gib * (1 << 30)))):
        with tempfile.TemporaryDirectory() as tmp:
            src = build(Path(tmp), inflate)
            size = (src / "CarsVal" / "zeroshot.pt").stat().st_size / 1e6
            result = run(src, Path(tmp) / "out", args.code.resolve())
        what = f"{size:.1f} MB" + (
            "" if inflate is None else f", a record inflating to {args.inflate_gib:g} GiB"
        )
        print(
            f"{label} ({what}): peak RSS {result['peak_mib']:.0f} MiB; wall {result['wall_s']:.1f} s; exit {result['exit']}"
        )
        print(f"  stderr ({result['stderr_lines']} line(s)), last: {result['last_line'] or '(none)'}")


if __name__ == "__main__":
    main()
