"""The reference accuracies of a merge, measured by the merge itself: zero-shot θ0 and fine-tuned
θ0 + τ of every task, at the merge's own precision and device, on the split it evaluates.

They are the Norm.Acc denominators and the α-selection baselines, so they must come from the same
evaluation as the merged models: the figures a run recorded in meta.json were measured at its
training precision (e.g. bf16-mixed), which biases every normalised score of an fp32 merge. Each
reference is cached under ``<cache_dir>/references/`` keyed by everything that changes it (weights,
task, split and its checksum, preprocessing, precision, device type); the runs' own figures are kept
as a cross-check, and a difference beyond ``reference_tolerance`` is reported.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import lightning as L

from orthoreg_pl.task_vectors import TaskVector
from orthoreg_pl.utils.io import sha256_text, write_json

log = logging.getLogger(__name__)
SPLITS = ("val", "test")
ZEROSHOT, FINETUNED = "zeroshot", "finetuned"
KeyOf = Callable[[str, str, "TaskVector | None"], dict]  # (task, split, vector) -> cache key
Accuracy = Callable[[str, str, "TaskVector | None", list], list]  # (task, split, vector, alphas)


def reference_key(
    setting: Mapping[str, str],
    task: str,
    split: str,
    checksum: str,
    preprocess: dict,
    vector: TaskVector | None,
) -> dict:
    """Everything an accuracy of θ0 (``vector`` None) or θ0 + τ depends on: the evaluation ``setting``
    (arch, pretrained, precision, matmul_precision, device) and the task's split and preprocessing."""
    return {
        "arch": setting["arch"],
        "pretrained": setting["pretrained"],
        "task": task,
        "split": split,
        "split_checksum": checksum,
        "preprocess": preprocess,
        "precision": setting["precision"],
        "matmul_precision": setting["matmul_precision"],
        "device": setting["device"],
        "weights": "θ0" if vector is None else f"θ0+τ {vector.info.space} sha256:{vector.info.checksum}",
    }


class ReferenceCache:
    """One small JSON file per reference (concurrent merge jobs never overwrite each other's).

    Every process of a distributed merge reads the file (Lightning starts the other processes at the
    first evaluation, and they replay what rank 0 did before it); once the processes are connected,
    rank 0's answer is broadcast, so all of them measure the same references together."""

    def __init__(self, folder: str | Path, trainer: L.Trainer) -> None:
        self.folder, self.trainer = Path(folder), trainer
        self.memo: dict[str, float] = {}

    def _path(self, key: dict) -> tuple[str, Path]:
        digest = sha256_text(json.dumps(key, sort_keys=True))
        return digest, self.folder / f"{key['task']}-{key['split']}-{digest[:16]}.json"

    def get(self, key: dict) -> float | None:
        digest, path = self._path(key)
        if digest not in self.memo:
            value = None
            if path.is_file():
                try:
                    stored = json.loads(path.read_text())
                    value = float(stored["accuracy"]) if stored.get("key") == key else None
                except (OSError, ValueError, KeyError, TypeError):
                    value = None  # a broken entry is measured again
            value = self.trainer.strategy.broadcast(value, src=0)
            if value is None:
                return None
            self.memo[digest] = value
        return self.memo[digest]

    def put(self, key: dict, accuracy: float) -> None:
        digest, path = self._path(key)
        self.memo[digest] = accuracy
        if self.trainer.is_global_zero:
            write_json(path, {"key": key, "accuracy": accuracy})


def measure(
    cache: ReferenceCache, key_of: KeyOf, accuracy: Accuracy, task: str, vector: TaskVector | None
) -> dict[str, dict[str, float]]:
    """{"zeroshot": {val, test}} and, with a vector, {"finetuned": {val, test}}: what the cache lacks is
    measured in one pass per split (α = 0 and 1 on the engine's in-place weights)."""
    out: dict[str, dict[str, float]] = {ZEROSHOT: {}, **({FINETUNED: {}} if vector is not None else {})}
    for split in SPLITS:
        keys = {ZEROSHOT: key_of(task, split, None)}
        if vector is not None:
            keys[FINETUNED] = key_of(task, split, vector)
        known = {which: cache.get(key) for which, key in keys.items()}
        missing = [which for which, value in known.items() if value is None]
        if missing:
            alphas = [0.0 if which == ZEROSHOT else 1.0 for which in missing]
            measured = accuracy(task, split, vector if FINETUNED in missing else None, alphas)
            for which, value in zip(missing, measured, strict=True):
                cache.put(keys[which], value)
                known[which] = value
        for which, value in known.items():
            out[which][split] = value
    return out


def cross_check(
    references: dict[str, dict[str, dict[str, float]]], vectors: dict[str, TaskVector], tolerance: float
) -> dict:
    """The merge's references against the figures each run recorded at its training precision."""
    differences = []
    for task, measured in references.items():
        meta = vectors[task].info.meta
        recorded = meta.get("accuracy") or {}
        for which, splits in measured.items():
            for split, value in splits.items():
                theirs = (recorded.get(which) or {}).get(split)
                if theirs is None:
                    continue
                differences.append(
                    {
                        "task": task,
                        "reference": which,
                        "split": split,
                        "merge": value,
                        "run": theirs,
                        "run_precision": meta.get("precision"),
                        "difference": value - theirs,
                    }
                )
    beyond = [d for d in differences if abs(d["difference"]) > tolerance]
    for d in beyond:
        log.warning(
            "%s %s %s accuracy: %.4f measured by this merge, %.4f recorded by the run (precision %s); "
            "the merge's figure is used",
            d["task"], d["reference"], d["split"], d["merge"], d["run"], d["run_precision"],
        )  # fmt: skip
    return {
        "tolerance": tolerance,
        "compared": len(differences),
        "max_abs_difference": max((abs(d["difference"]) for d in differences), default=0.0),
        "beyond_tolerance": beyond,
    }
