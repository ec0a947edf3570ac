"""What the reference implementation's folder and file names say (docs/import.md): mode, lr, λ, backbone,
seed and task, parsed strictly so a misread folder stops the import instead of mislabelling a run."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from orthoreg_pl.errors import OrthoRegError

# reference mode name → this project's mode name
MODES = {
    "standard": "standard",
    "standard_ortho": "standard_ortho",
    "linear": "linear",
    "linear_ortho": "linear_ortho",
    "linear-2": "attn",
    "linear-2_ortho": "attn_ortho",
    "loraatt": "lora_attn",
    "loraatt_ortho": "lora_attn_ortho",
}
TASKS = ("Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SUN397", "SVHN")  # the released eight
MODE_PATTERN = "{mode}_{lr}_{model} or {mode}_ortho_{lr}_lambda{λ}_{model}"
_NUMBER = r"[0-9][0-9.eE+-]*"
_MODE_FOLDER = re.compile(
    rf"^(?P<mode>{'|'.join(sorted(map(re.escape, MODES), key=len, reverse=True))})"
    rf"_(?P<lr>{_NUMBER})(?:_lambda(?P<lam>{_NUMBER}))?_(?P<arch>[A-Za-z0-9].*)$"
)
_SEED_FOLDER = re.compile(r"^checkpoints_(?P<seed>[0-9]+)$")
_TASK_FOLDER = re.compile(r"^(?P<task>.+)Val$")


@dataclass(frozen=True)
class ModeFolder:
    """One ``checkpoints_SEED/<mode folder>``: what every task folder in it was trained with."""

    name: str  # the folder name, as found
    reference_mode: str  # e.g. "linear-2_ortho"
    mode: str  # this project's name, e.g. "attn_ortho"
    lr: float
    lam: float  # 0.0 for baselines
    arch: str  # open_clip architecture, e.g. "ViT-B-32"

    @property
    def penalized(self) -> bool:
        return self.reference_mode.endswith("_ortho")

    @property
    def file_prefix(self) -> str:
        """Prefix of the checkpoint and accuracy files: none for ``standard``, ``<mode>_`` otherwise."""
        return "" if self.reference_mode == "standard" else f"{self.reference_mode}_"

    @property
    def zeroshot_file(self) -> str:
        return f"{self.file_prefix}zeroshot.pt"

    @property
    def finetuned_file(self) -> str:
        return f"{self.file_prefix}finetuned.pt"

    @property
    def accuracy_file(self) -> str:
        return f"{self.file_prefix}ft_accuracies.json"


def _number(text: str, what: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise OrthoRegError(
            f"reference folder {name!r}: {what} {text!r} is not a finite number >= 0; expected {MODE_PATTERN}"
        )
    return value


def parse_mode_folder(name: str) -> ModeFolder:
    """``standard_1e-05_ViT-B-32`` → standard, lr 1e-5, λ 0, ViT-B-32;
    ``standard_ortho_1e-05_lambda10.0_ViT-B-32`` → standard_ortho, lr 1e-5, λ 10, ViT-B-32."""
    match = _MODE_FOLDER.match(name)
    if not match:
        raise OrthoRegError(
            f"reference folder {name!r} is not a mode folder; expected {MODE_PATTERN} with mode one of "
            f"{', '.join(MODES)} (e.g. standard_1e-05_ViT-B-32, standard_ortho_1e-05_lambda10.0_ViT-B-32)"
        )
    reference_mode, lam_text = match["mode"], match["lam"]
    penalized = reference_mode.endswith("_ortho")
    if penalized != (lam_text is not None):
        need = "needs" if penalized else "must not have"
        raise OrthoRegError(
            f"reference folder {name!r}: mode {reference_mode} {need} a _lambda{{λ}} part; expected {MODE_PATTERN}"
        )
    return ModeFolder(
        name=name,
        reference_mode=reference_mode,
        mode=MODES[reference_mode],
        lr=_number(match["lr"], "learning rate", name),
        lam=_number(lam_text, "λ", name) if penalized else 0.0,
        arch=match["arch"],
    )


def parse_seed_folder(name: str) -> int:
    """``checkpoints_1993`` → 1993."""
    match = _SEED_FOLDER.match(name)
    if not match:
        raise OrthoRegError(
            f"folder {name!r} above the mode folder is not checkpoints_{{seed}} (e.g. checkpoints_1993); "
            "give the seed with --seed"
        )
    return int(match["seed"])


def parse_task_folder(name: str) -> str:
    """``CarsVal`` → ``Cars`` (the project's task name)."""
    match = _TASK_FOLDER.match(name)
    if not match or match["task"] not in TASKS:
        raise OrthoRegError(
            f"task folder {name!r} is not one of {', '.join(t + 'Val' for t in TASKS)} ({{Dataset}}Val)"
        )
    return match["task"]


def is_task_folder(name: str) -> bool:
    return bool(_TASK_FOLDER.match(name))


__all__ = [
    "MODES",
    "MODE_PATTERN",
    "TASKS",
    "ModeFolder",
    "is_task_folder",
    "parse_mode_folder",
    "parse_seed_folder",
    "parse_task_folder",
]
