"""The package's layers hold: import-linter's contracts in pyproject.toml (layers, independence, no
import circle at any depth) are kept."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
    kept = [line for line in done.stdout.splitlines() if line.rstrip().endswith("KEPT")]
    assert len(kept) == 5, done.stdout[-2000:]
