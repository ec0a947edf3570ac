"""The fine-tuning LightningModules: θ0 handling, the penalised parameter set, CE + λ·penalty, the lr schedule."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import cpu_trainer as conftest_cpu_trainer
from conftest import fixed_batches, make_classifier
from torch.utils.data import DataLoader

from orthoreg_pl import OrthoRegError
from orthoreg_pl.modules import MODES, StandardFineTuning, StandardOrthoFineTuning
from orthoreg_pl.modules.schedule import warmup_cosine
from orthoreg_pl.penalties.ortho import ortho_penalty_reference, penalty_at_zero

BLOCK_MATRICES = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TINY_PENALIZED = {"visual.positional_embedding", "visual.proj"} | {
    f"visual.transformer.resblocks.{i}.{m}" for i in range(2) for m in BLOCK_MATRICES
}


def cpu_trainer(**kwargs) -> L.Trainer:
    return conftest_cpu_trainer(limit_val_batches=0, **kwargs)  # training only


def test_modes_registry():
    """Every mode of docs/method.md §3 is registered under its config name, with and without OrthoReg."""
    bases = ("standard", "linear", "attn", "lora_attn")
    assert set(MODES) == {*bases, *(f"{b}_ortho" for b in bases)}
    assert MODES["standard"] is StandardFineTuning and MODES["standard_ortho"] is StandardOrthoFineTuning
    assert all(MODES[f"{b}_ortho"].uses_penalty and not MODES[b].uses_penalty for b in bases)


def test_first_step_of_ortho_equals_standard():
    """At ΔW=0 the penalty's gradient is exactly zero, so step 1 of standard_ortho is step 1 of standard."""
    loader = DataLoader(fixed_batches(1, batch_size=4), batch_size=4, shuffle=False)
    results = {}
    for cls, lam in ((StandardFineTuning, 0.0), (StandardOrthoFineTuning, 10.0)):
        model = make_classifier()
        module = cls(model, lr=1e-3, warmup_steps=1, lam=lam)
        before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
        cpu_trainer(max_steps=1, gradient_clip_val=1.0).fit(module, loader)
        after = {n: p.detach().clone() for n, p in module.model.named_parameters()}
        assert all(
            not torch.equal(before[n], after[n]) for n in module.penalized_names
        )  # a real step happened
        results[cls.mode] = after
    std, ortho = results["standard"], results["standard_ortho"]
    assert std.keys() == ortho.keys()
    for name in std:
        assert torch.equal(std[name], ortho[name]), name


def test_theta0_buffers_and_task_vector():
    """θ0 is a non-persistent buffer copy (moves with the module, not in checkpoints); τ = θ − θ0 exactly."""
    module = StandardOrthoFineTuning(make_classifier(), lr=1e-3, warmup_steps=1, lam=1.0)
    state = module.state_dict()
    assert not any(k.startswith("theta0") for k in state)
    assert set(state) == {f"model.{n}" for n in module.trainable_names}
    initial = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    for name in module.trainable_names:
        theta0 = module.theta0(name)
        assert theta0.device == module.device
        assert theta0.data_ptr() != module.model.get_parameter(name).data_ptr()
        assert torch.equal(theta0, initial[name])
    loader = DataLoader(fixed_batches(2, batch_size=4), batch_size=4)
    cpu_trainer(max_steps=2, gradient_clip_val=1.0).fit(module, loader)
    tv = module.task_vector()
    assert list(tv) == module.trainable_names
    for name, delta in tv.items():
        param = module.model.get_parameter(name).detach()
        assert torch.equal(delta, param - initial[name]), name
        assert torch.equal(module.theta0(name), initial[name])  # θ0 never moves
        assert delta.device.type == "cpu" and delta.is_contiguous()
    # θ0 moves with the module (a buffer, not a plain attribute)
    module.to(torch.float64)
    assert all(module.theta0(n).dtype == torch.float64 for n in module.trainable_names)
    module.to("meta")
    assert all(module.theta0(n).device.type == "meta" for n in module.trainable_names)


def test_penalized_parameters_and_value_at_init():
    """Penalised: every trainable 2-D weight of the image tower (docs/method.md §2) and nothing else."""
    module = StandardOrthoFineTuning(make_classifier(), lam=10.0)
    assert set(module.penalized_names) == TINY_PENALIZED
    trainable = set(module.trainable_names)
    assert "visual.conv1.weight" in trainable and "visual.class_embedding" in trainable
    assert all(module.model.get_parameter(n).ndim == 2 for n in module.penalized_names)
    shapes = [tuple(module.model.get_parameter(n).shape) for n in module.penalized_names]
    value = module.penalty()
    # tiny: 8 block matrices with min side 64, positional embedding [17, 64], proj [64, 32]
    assert value.item() == pytest.approx(8 * 8 + math.sqrt(17) + math.sqrt(32), rel=1e-6)
    assert value.item() == pytest.approx(penalty_at_zero(shapes), rel=1e-6)


def test_penalty_uses_configured_options():
    """ortho.norm / ortho.gram reach the penalty (λ values do not transfer between the two forms)."""
    module = StandardOrthoFineTuning(make_classifier(), lam=1.0, norm="fro_squared", gram="columns")
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    deltas = [module.model.get_parameter(n) - module.theta0(n) for n in module.penalized_names]
    expected = ortho_penalty_reference(deltas, norm="fro_squared", gram="columns")
    torch.testing.assert_close(module.penalty(), expected, rtol=1e-5, atol=0.0)


def test_bad_lambda_raises():
    with pytest.raises(OrthoRegError, match="-1"):
        StandardOrthoFineTuning(make_classifier(), lam=-1.0)
    with pytest.raises(OrthoRegError, match="standard"):
        StandardFineTuning(make_classifier(), lam=0.5)
    with pytest.raises(OrthoRegError, match="l1"):
        StandardOrthoFineTuning(make_classifier(), lam=1.0, norm="l1")


def test_penalty_once_per_optimizer_step_under_accumulation():
    """With accumulate_grad_batches=2 the (costly) penalty runs once per optimizer step, not per micro-batch."""
    module = StandardOrthoFineTuning(make_classifier(), lr=1e-3, warmup_steps=1, lam=1.0)
    calls = []
    original = module.penalty

    def counting_penalty():
        calls.append(module.trainer.global_step)
        return original()

    module.penalty = counting_penalty
    loader = DataLoader(fixed_batches(4, batch_size=2), batch_size=2)
    trainer = cpu_trainer(max_steps=2, accumulate_grad_batches=2, gradient_clip_val=1.0)
    trainer.fit(module, loader)
    assert trainer.global_step == 2
    assert calls == [0, 1]


class RecordGradients(L.Callback):
    """At the second optimizer step: the accumulated gradient and the weights it was computed at."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 1:
            self.model = copy.deepcopy(pl_module.model)
            self.theta0 = {n: pl_module.theta0(n).clone() for n in pl_module.trainable_names}
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()}


@pytest.mark.parametrize("sum_accumulated_loss", [False, True])
def test_accumulated_gradient_is_ce_plus_lambda_penalty(sum_accumulated_loss):
    """Under 2× accumulation the step's gradient is that of mean CE + λ·penalty (or, like the reference,
    summed CE + 2λ·penalty): the penalty is neither dropped nor counted twice."""
    lam, accumulate, bs = 3.0, 2, 2
    data = fixed_batches(4, batch_size=bs)
    module = StandardOrthoFineTuning(
        make_classifier(), lr=1e-2, warmup_steps=1, lam=lam, sum_accumulated_loss=sum_accumulated_loss
    )
    record = RecordGradients()
    trainer = cpu_trainer(max_steps=2, accumulate_grad_batches=accumulate, callbacks=[record])
    trainer.fit(module, DataLoader(data, batch_size=bs, shuffle=False))
    model = record.model
    model.zero_grad()
    images, labels = data.tensors
    micro = [F.cross_entropy(model(images[i : i + bs]), labels[i : i + bs]) for i in (2 * bs, 3 * bs)]
    deltas = [model.get_parameter(n) - record.theta0[n] for n in module.penalized_names]
    penalty = ortho_penalty_reference(deltas, norm="fro", gram="min_side")
    assert penalty.item() > 0
    if sum_accumulated_loss:
        loss = sum(micro) + accumulate * lam * penalty
    else:
        loss = sum(micro) / accumulate + lam * penalty
    loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(record.grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_orthogonality_monitor_logs_current_delta():
    """The W&B dashboard's monitor/* metrics are the unsquared min-side penalty and ‖θ − θ0‖ of the current ΔW."""
    from orthoreg_pl.callbacks.orthogonality_monitor import OrthogonalityMonitor

    with pytest.raises(ValueError):
        OrthogonalityMonitor(every_n_steps=0)
    module = StandardFineTuning(make_classifier(), lr=1e-2, warmup_steps=1)
    trainer = cpu_trainer(max_steps=2, callbacks=[OrthogonalityMonitor(every_n_steps=1)])
    trainer.fit(module, DataLoader(fixed_batches(2, batch_size=2), batch_size=2))
    tv = module.task_vector()
    expected_norm = torch.sqrt(sum((d.double() ** 2).sum() for d in tv.values()))
    expected_penalty = ortho_penalty_reference([d.double() for d in tv.values() if d.ndim == 2])
    metrics = trainer.callback_metrics
    assert metrics["monitor/delta_norm"].item() == pytest.approx(expected_norm.item(), rel=1e-5)
    assert metrics["monitor/ortho_penalty"].item() == pytest.approx(expected_penalty.item(), rel=1e-5)


def test_warmup_cosine_schedule():
    """Linear warm-up from lr/warmup, then cosine to 0 over the remaining optimizer steps (docs/method.md §4)."""
    warmup, total = 500, 2500
    assert warmup_cosine(0, warmup, total) == pytest.approx(1 / warmup)
    assert warmup_cosine(warmup - 1, warmup, total) == pytest.approx(1.0)
    assert warmup_cosine(warmup, warmup, total) == pytest.approx(1.0)
    assert warmup_cosine(warmup + (total - warmup) // 2, warmup, total) == pytest.approx(0.5)
    assert warmup_cosine(total, warmup, total) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(total + 10, warmup, total) == pytest.approx(0.0, abs=1e-12)
    steps = [warmup_cosine(s, warmup, total) for s in range(total + 1)]
    assert all(a <= b for a, b in zip(steps[:warmup], steps[1:warmup]))  # rising
    assert all(a >= b for a, b in zip(steps[warmup:], steps[warmup + 1 :]))  # then falling


class RecordLearningRates(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_optimizer_follows_recipe():
    """AdamW (betas, eps, weight decay) on every trainable parameter; lr = base·warmup_cosine(step) per step,
    with the cosine ending at the trainer's last optimizer step."""
    module = StandardFineTuning(make_classifier(), lr=2e-3, weight_decay=0.05, warmup_steps=2)
    record = RecordLearningRates()
    trainer = cpu_trainer(max_steps=4, callbacks=[record])
    trainer.fit(module, DataLoader(fixed_batches(4, batch_size=2), batch_size=2))
    (optimizer,) = trainer.optimizers
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert group["weight_decay"] == 0.05 and tuple(group["betas"]) == (0.9, 0.999) and group["eps"] == 1e-8
    assert sum(p.numel() for p in group["params"]) == sum(p.numel() for p in module.model.parameters())
    assert record.lrs == pytest.approx([2e-3 * f for f in (0.5, 1.0, 1.0, 0.5)])
