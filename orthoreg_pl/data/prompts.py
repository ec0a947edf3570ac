"""The prompt templates and class names of the task-arithmetic literature: packaged data, read by the
task loaders (class names) and by the zero-shot heads (templates)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

PROMPTS_FILE = Path(__file__).resolve().parent.parent / "resources" / "zeroshot_prompts.json"


@functools.cache
def _prompts_text() -> str:
    return PROMPTS_FILE.read_text()


def load_prompts() -> dict:
    """task -> {templates, classnames, ...} (a fresh dict: callers may change theirs)."""
    return json.loads(_prompts_text())
