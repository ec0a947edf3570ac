"""Shared fixtures: one quickstart data/head cache per session, Hydra composition, tiny models.

Nothing here downloads: the only model is the random-init ``orthoreg-tiny-vit`` and the only data
are the quickstart tasks generated offline into a temporary cache.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"
TINY = "orthoreg-tiny-vit"

# Keep the suite small and reproducible on a 2-core CPU machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache (quickstart arrays, zero-shot heads) for the whole session: each task is made once."""
    return tmp_path_factory.mktemp("orthoreg_cache")


@pytest.fixture(scope="session")
def missing_data_root(tmp_path_factory) -> Path:
    """A data root that does not exist (quickstart tasks must not need one)."""
    return tmp_path_factory.mktemp("roots") / "no_such_data_root"


def compose_config(
    overrides: Iterable[str], *, keep_hydra: bool = False, config_name: str = "train"
) -> DictConfig:
    """Compose the real ``configs/train.yaml`` as ``train.py`` would, with ``${hydra:...}`` resolvable.

    The hydra node is dropped unless ``keep_hydra`` (``@hydra.main`` hands ``train`` a config without it).
    """
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="test"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    if not keep_hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def path_overrides(tmp: Path, cache: Path, output_dir: Path | None = None) -> list[str]:
    """Point every path of the config into temporary folders (never the project's runs/ or .cache/)."""
    out = [
        f"paths.root_dir={PROJECT_ROOT}",
        f"paths.runs_dir={tmp / 'runs'}",
        f"paths.cache_dir={cache}",
        f"paths.data_root={tmp / 'data'}",
    ]
    if output_dir is not None:
        out.append(f"paths.output_dir={output_dir}")
    return out


@pytest.fixture
def compose_cfg():
    return compose_config


MERGE_TASKS = ["Digits", "Shapes"]
MERGE_RUN_OVERRIDES = [  # train.py's overrides of each merge_runs run (its identity), besides the dataset
    "experiment=quickstart",
    "mode=standard_ortho",
    "logger=none",
    "trainer.max_steps=3",
    "trainer.limit_val_batches=1",
]
# what a merge of those runs names besides its experiment: the training settings the runs had beyond
# experiment=quickstart (evaluation/selection.py selects exactly the runs of that identity)
MERGE_SELECT = 'train_overrides=["trainer.max_steps=3","trainer.limit_val_batches=1"]'


@pytest.fixture(scope="session")
def merge_runs(tmp_path_factory, cache_dir) -> Path:
    """<tmp>/runs/<Task>: Digits and Shapes fine-tuned for 3 steps with standard_ortho (λ 0.1), for
    the merge tests. Tests that change a run copy it first."""
    from orthoreg_pl.training.fit import train

    tmp = tmp_path_factory.mktemp("merge_runs")
    for task in MERGE_TASKS:
        overrides = [*MERGE_RUN_OVERRIDES, f"dataset={task.lower()}"]
        train(compose_config([*overrides, *path_overrides(tmp, cache_dir, output_dir=tmp / "runs" / task)]))
    return tmp


def make_classifier(init_seed: int = 0, num_classes: int = 5, head_seed: int = 123):
    """A tiny ImageClassifier with a fixed random head (no text tower, no cache needed)."""
    from orthoreg_pl.models import ImageClassifier, create_clip

    clip = create_clip(TINY, None, init_seed=init_seed)
    head = torch.randn(num_classes, 32, generator=torch.Generator().manual_seed(head_seed))
    return ImageClassifier(clip.visual, head)


def cpu_trainer(**kwargs):
    """A quiet single-process CPU Trainer (no logger, checkpoints, bars or summary); kwargs override."""
    import lightning as L

    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**defaults, **kwargs})


def fixed_batches(num_batches: int = 1, batch_size: int = 4, num_classes: int = 5, seed: int = 7):
    """A TensorDataset of ``num_batches * batch_size`` fixed images/labels for the tiny model."""
    g = torch.Generator().manual_seed(seed)
    n = num_batches * batch_size
    images = torch.randn(n, 3, 32, 32, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return torch.utils.data.TensorDataset(images, labels)


def pytest_configure(config):
    # Lightning's own deprecation notice about torch's pytree API: noise, not about this project.
    config.addinivalue_line("filterwarnings", "ignore:.*LeafSpec.*:DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore:.*LeafSpec.*:FutureWarning")


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory) -> dict:
    """Tiny trees of the nine real datasets in the layouts of docs/data.md, under one data root (built once)."""
    from fake_trees import build_all

    return build_all(tmp_path_factory.mktemp("fake_data") / "data")


@pytest.fixture
def restore_logging():
    """Hydra points the root logger at a test's captured output when a script runs in-process: later
    tests must not log to it. (tests/test_bad_input.py uses it for every test.)"""
    names = ["", "orthoreg_pl", "lightning.pytorch", "lightning.fabric", "hydra"]
    saved = {
        n: (lg.handlers[:], lg.level, lg.propagate, lg.disabled)
        for n in names
        if (lg := logging.getLogger(n))
    }
    yield
    for name, (handlers, level, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate, logger.disabled = handlers, propagate, disabled
        logger.setLevel(level)
