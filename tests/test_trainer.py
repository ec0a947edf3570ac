"""trainer.matmul_precision: set by the Trainer's config in every process, part of a run's identity only
when it is not the reference's exact float32 (so earlier runs keep their folders)."""

from __future__ import annotations

import logging
import os
import signal

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


@pytest.fixture
def in_a_slurm_job(monkeypatch):
    """This process as the only task of SLURM job 4242 (as srun starts it); the signal handlers put back."""
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_"))]:
        monkeypatch.delenv(key)
    slurm = {"JOB_ID": "4242", "JOB_NAME": "orthoreg", "NTASKS": "1", "PROCID": "0", "LOCALID": "0",
             "NODEID": "0", "NODELIST": "n1", "STEP_NUM_TASKS": "1"}  # fmt: skip
    for key, value in slurm.items():
        monkeypatch.setenv(f"SLURM_{key}", value)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def fit_two_steps(
    trainer: L.Trainer,
    checkpoint: str = "unused/last.ckpt",
    sigterm: bool = False,
    messages: list | None = None,
) -> list[str]:
    """Fit a linear model two steps under the run's lifecycle (SIGTERM at the first step if asked);
    the INFO lines Lightning and we logged (also into ``messages``, kept if the fit raises)."""
    from orthoreg_pl.runs.lifecycle import RunLifecycle

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            if sigterm and self.global_step == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            return self.layer(batch[0]).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    lifecycle = RunLifecycle("identity", checkpoint)
    trainer.callbacks.append(lifecycle)
    handler = ListHandler()
    handler.messages = [] if messages is None else messages
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "orthoreg_pl")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=2)
    try:
        with lifecycle.signal_handlers():
            trainer.fit(Tiny(), data)
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
    return handler.messages


QUIET = dict(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
             enable_progress_bar=False, enable_model_summary=False)  # fmt: skip


def test_under_slurm_lightning_leaves_the_requeue_to_the_lifecycle(in_a_slurm_job, restore_matmul_precision):
    """Lightning's SLURM environment with auto-requeue off: its handlers stay out (no "SLURM
    auto-requeueing enabled"), and the run logs one line saying which signals it answers."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    trainer = make_trainer(**QUIET)
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is False
    messages = fit_two_steps(trainer)
    assert not [m for m in messages if "auto-requeueing" in m], messages
    ours = [m for m in messages if "Lightning's auto-requeue is off" in m]
    assert ours == [
        "SLURM job 4242: SIGUSR1 save last.ckpt after the current optimizer step and requeue the job, "
        "SIGINT, SIGTERM save and stop (orthoreg's handler; Lightning's auto-requeue is off)"
    ]
    # Lightning left alone (a Trainer not made by make_trainer) would set its own handlers
    assert any("SLURM auto-requeueing enabled" in m for m in fit_two_steps(L.Trainer(**QUIET)))


def test_the_signal_time_checkpoint_is_saved_once_and_whole(
    in_a_slurm_job, tmp_path, restore_matmul_precision
):
    """SIGTERM under SLURM: the lifecycle's save (weights and optimizer state: the run resumes from it),
    stated explicitly, so Lightning has nothing to warn about; Lightning saves no checkpoint of its own."""
    from orthoreg_pl.errors import RunInterrupted

    messages = []
    with pytest.raises(RunInterrupted, match="stopped by SIGTERM at step 1"):
        fit_two_steps(make_trainer(**{**QUIET, "default_root_dir": str(tmp_path)}), str(tmp_path / "last.ckpt"),
                      sigterm=True, messages=messages)  # fmt: skip
    assert messages and not [m for m in messages if "weights_only" in m], messages
    assert [p.name for p in tmp_path.rglob("*.ckpt")] == ["last.ckpt"]
    assert "optimizer_states" in torch.load(tmp_path / "last.ckpt", weights_only=True)


def test_outside_slurm_the_trainer_gets_no_cluster_plugin(monkeypatch, restore_matmul_precision):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    trainer = make_trainer(**QUIET)
    assert not isinstance(trainer._accelerator_connector.cluster_environment, SLURMEnvironment)
