"""The reference accuracies of a merge, measured by the merge itself: zero-shot θ0 and fine-tuned
θ0 + τ of every task, at the merge's own precision and device, on the split it evaluates.

They are the Norm.Acc denominators and the α-selection baselines, so they must come from the same
evaluation as the merged models: the figures a run recorded in meta.json were measured at its
training precision (e.g. bf16-mixed), which biases every normalised score of an fp32 merge. Each
reference is cached under ``<cache_dir>/references/`` keyed by everything that changes it (weights,
task, split and its checksum, preprocessing, precision, device type); the runs' own figures are kept
as a cross-check, and a difference beyond ``reference_tolerance`` is reported.

Each cached file records the sha256 of its key and accuracy, verified when it is read, like the eval
cache's pixels: an entry changed after it was measured is refused, naming the file (delete it and
the next merge measures it again), never used as "measured by this merge".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import lightning as L

from orthoreg_pl.errors import OrthoRegError
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
            value = read_entry(path, key) if path.is_file() else None
            value = self.trainer.strategy.broadcast(value, src=0)
            if value is None:
                return None
            self.memo[digest] = value
        return self.memo[digest]

    def put(self, key: dict, accuracy: float) -> None:
        digest, path = self._path(key)
        self.memo[digest] = accuracy
        if self.trainer.is_global_zero:
            write_json(path, {"key": key, "accuracy": accuracy, "sha256": entry_sha256(key, accuracy)})


def entry_sha256(key: dict, accuracy: float) -> str:
    """What a cache file's content hashes to: its key and its accuracy, as JSON."""
    return sha256_text(json.dumps({"key": key, "accuracy": accuracy}, sort_keys=True))


def read_entry(path: Path, key: dict) -> float | None:
    """The accuracy a cache file holds for ``key``; None for an entry written before the files had a
    checksum (measured again and rewritten). A file that does not match its recorded sha256, or
    holds another key or no accuracy in [0, 1], is refused naming it: it was changed after the
    merge that measured it wrote it."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _changed(path, f"unreadable: {err}") from None
    if not isinstance(stored, dict):
        raise _changed(path, "not a JSON object")
    if "sha256" not in stored and set(stored) == {"key", "accuracy"}:
        log.info("references cache %s has no checksum (written before they had one): measured again", path)
        return None
    accuracy = stored.get("accuracy")
    if stored.get("sha256") != entry_sha256(stored.get("key"), accuracy):
        raise _changed(path, "it does not match the sha256 it recorded when it was measured")
    if stored.get("key") != key:
        raise _changed(path, "it holds the reference of another setting")
    if isinstance(accuracy, bool) or not isinstance(accuracy, int | float) or not 0 <= accuracy <= 1:
        raise _changed(path, f"its accuracy is {accuracy!r}, not a fraction in [0, 1]")
    return float(accuracy)


def _changed(path: Path, why: str) -> OrthoRegError:
    return OrthoRegError(
        f"references cache {path} is refused ({why}); it changed since a merge measured it: delete it "
        f"(rm {path}) and the next merge measures that reference again"
    )


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
