"""trainer.matmul_precision: set by the Trainer's config in every process, part of a run's identity only
when it is not the reference's exact float32 (so earlier runs keep their folders)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import compose_config, path_overrides
from hydra.utils import instantiate

from orthoreg_pl.runs.identity import identity_hash, identity_settings, report_settings
from orthoreg_pl.training.trainer import make_trainer


@pytest.fixture
def restore_matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_the_configured_trainer_sets_matmul_precision(tmp_path, cache_dir, restore_matmul_precision):
    base = ["experiment=quickstart", "dataset=digits", *path_overrides(tmp_path, cache_dir)]
    for value in ("high", "highest"):
        cfg = compose_config([*base, f"trainer.matmul_precision={value}"])
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
        assert isinstance(trainer, L.Trainer)
        assert torch.get_float32_matmul_precision() == value


def test_make_trainer_refuses_an_unknown_precision(restore_matmul_precision):
    with pytest.raises(ValueError, match="trainer.matmul_precision='tf32'; expected one of"):
        make_trainer("tf32", accelerator="cpu")


def test_identity_keeps_earlier_runs_at_highest_and_separates_tf32(tmp_path, cache_dir):
    base = ["experiment=quickstart", "dataset=digits", *path_overrides(tmp_path, cache_dir)]
    default, tf32 = compose_config(base), compose_config([*base, "trainer.matmul_precision=high"])
    assert default.trainer.matmul_precision == "highest"
    settings, settings_tf32 = identity_settings(default, 0.0), identity_settings(tf32, 0.0)
    assert "trainer.matmul_precision" not in settings  # the hash every earlier run was given
    assert settings_tf32 == {**settings, "trainer.matmul_precision": "high"}
    assert identity_hash(settings) != identity_hash(settings_tf32)
    merge = ["experiment=quickstart_addition", *path_overrides(tmp_path, cache_dir)]
    merge_default = compose_config(merge, config_name="merge")
    merge_tf32 = compose_config([*merge, "trainer.matmul_precision=high"], config_name="merge")
    assert "trainer.matmul_precision" not in report_settings(merge_default, 0.0)
    assert report_settings(merge_tf32, 0.0)["trainer.matmul_precision"] == "high"
