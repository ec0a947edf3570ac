"""Training on several processes: ``trainer=ddp_sim`` (2 CPU processes over gloo) and ``trainer=fsdp`` on
the CPU, each run as ``train.py`` subprocesses, against one process with the same global batch; every
trainer config composes.

Every run is the tiny random-init ViT on the quickstart Digits task for 10 steps: DDP and FSDP with 2 × 32
samples a step, the single process with 64. Digits' val split has 143 samples: an odd number, which
torch's padded DistributedSampler would round up by repeating samples.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, compose_config, cpu_trainer, path_overrides
from hydra.utils import instantiate
from test_lifecycle import env
from torch.utils.data import DistributedSampler, TensorDataset

import orthoreg_pl.data.sampler as sampler_module
from orthoreg_pl.config.lam import effective_lambda
from orthoreg_pl.data import eval_dataloader
from orthoreg_pl.data.sampler import UnpaddedDistributedSampler
from orthoreg_pl.task_vectors import load_task_vector
from orthoreg_pl.training.fit import _evaluate, build

STEPS = 10
RUN = [
    "experiment=quickstart",
    "dataset=digits",
    "mode=standard_ortho",  # λ = 0.1: the penalty's gradient and the cross-entropy's both cross processes
    "logger=none",
    f"trainer.max_steps={STEPS}",
    "trainer.enable_progress_bar=false",
    "data.eval_batch_size=71",  # val: 72 + 71 samples on 2 processes, in batches of 71 + 1 and 70 + 1
    "callbacks.checkpoint.every_n_train_steps=7",  # last.ckpt at step 7: the resume tests continue from it
]
RUNS = {  # name: overrides; the global batch is 64 in all three
    "single": ["trainer=cpu", "data.batch_size=64"],
    "ddp": ["trainer=ddp_sim", "data.batch_size=64"],  # global: 2 × 32
    "fsdp": ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=64"],
}
TOLERANCE = 1e-5


def train_py(args: list[str], cache: Path, tmp: Path, timeout: float = 240) -> str:
    """Run ``train.py`` to the end (its DDP/FSDP workers included); a hang fails the test, killing them."""
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=PROJECT_ROOT,
        env=env(cache, tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # one process group: the workers Lightning starts go with it
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"train.py {' '.join(args)} did not end in {timeout} s:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-6000:]
    return output


def meta_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """The three runs to the end, then the DDP and FSDP ones again from their step-7 checkpoint.

    {name: run folder, name + "_whole": task vector of the uninterrupted run}."""
    tmp = tmp_path_factory.mktemp("ddp")
    out = {}
    for name, overrides in RUNS.items():
        out[name] = tmp / name
        train_py([*RUN, *overrides, f"hydra.run.dir={out[name]}"], cache_dir, tmp)
    for name in ("ddp", "fsdp"):
        out[f"{name}_whole"] = load_task_vector(out[name] / "task_vector.safetensors")
        meta = meta_of(out[name])
        meta["status"] = "running"  # as if killed after the step-7 checkpoint
        (out[name] / "meta.json").write_text(json.dumps(meta))
        output = train_py([*RUN, *RUNS[name], f"hydra.run.dir={out[name]}"], cache_dir, tmp)
        assert "resuming from" in output, output[-3000:]
    return out


@pytest.fixture(scope="module")
def reference(runs, tmp_path_factory, cache_dir):
    """Single-process evaluation, in this process, of θ0 and of θ0 + τ of a run: {"val", "test"} accuracies."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = compose_config([*RUN, *RUNS["single"], *path_overrides(tmp, cache_dir, output_dir=tmp / "run")])

    def evaluate(run: str | None) -> dict:
        datamodule, module = build(cfg, effective_lambda(cfg))
        if run is not None:
            with torch.no_grad():
                for name, delta in load_task_vector(runs[run] / "task_vector.safetensors").items():
                    module.model.get_parameter(name).add_(delta)
        return _evaluate(cpu_trainer(), module, datamodule, "reference")

    return evaluate


def split_sizes(cache_dir: Path, tmp: Path) -> dict[str, int]:
    cfg = compose_config([*RUN, *RUNS["single"], *path_overrides(tmp, cache_dir, output_dir=tmp / "run")])
    datamodule, _ = build(cfg, effective_lambda(cfg))
    datamodule.setup()
    return {"val": len(datamodule.val_set), "test": len(datamodule.test_set)}


@pytest.mark.parametrize("run", ["ddp", "fsdp"])
def test_accuracy_in_meta_equals_single_process(run, runs, reference, cache_dir, tmp_path):
    """Zero-shot and fine-tuned val/test accuracy of a 2-process run are exactly those of one process:
    each sample counted once (no padding), the counts summed over processes."""
    sizes = split_sizes(cache_dir, tmp_path)
    assert sizes["val"] == 143  # odd: a padded sampler would count a repeated sample
    accuracy = meta_of(runs[run])["accuracy"]
    assert accuracy["zeroshot"] == reference(None) == meta_of(runs["single"])["accuracy"]["zeroshot"]
    assert accuracy["finetuned"] == reference(run)
    for stage in ("zeroshot", "finetuned"):
        for split, n in sizes.items():
            count = accuracy[stage][split] * n
            assert abs(count - round(count)) < 1e-3, (stage, split, count)  # a count out of n, not of n + pad
    # trained past chance (0.1): the equality is about a model that tells classes apart
    assert 0.15 < accuracy["finetuned"]["val"] < 1.0


def key_bias(name: str, tensor: torch.Tensor) -> slice | None:
    """The key part of a fused in_proj bias: adding a constant to every key shifts all of a query's scores
    alike, so its true gradient is 0, and AdamW turns the float noise left there (summation order differs
    between 1 and 2 processes) into full-size ±lr steps. It cannot be compared; nothing depends on it."""
    if name.endswith("attn.in_proj_bias"):
        width = tensor.numel() // 3
        return slice(width, 2 * width)
    return None


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(max |a − b| over every entry but the key biases, max |a − b| over the key biases)."""
    rest, keys = 0.0, 0.0
    for name in a:
        diff = (a[name] - b[name]).abs()
        part = key_bias(name, diff)
        if part is not None:
            keys = max(keys, float(diff[part].max()))
            diff[part] = 0
        rest = max(rest, float(diff.max()))
    return rest, keys


@pytest.mark.parametrize("run", ["ddp", "fsdp"])
def test_task_vector_equals_single_process_with_the_same_global_batch(run, runs):
    """2 processes × 32 samples and 1 × 64 take the same samples each step (ResumableSampler shards one
    permutation), so gradients, penalty, clipping and AdamW agree up to float summation order."""
    single = load_task_vector(runs["single"] / "task_vector.safetensors")
    vector = runs[f"{run}_whole"]
    assert vector.keys() == single.keys()
    rest, keys = max_difference(vector, single)
    assert rest <= TOLERANCE, f"max |Δτ| = {rest:.3g} outside the key biases"
    assert keys <= 2 * 1e-3 * STEPS  # at most ±lr per step apart
    assert max(float(t.abs().max()) for t in single.values()) > 100 * TOLERANCE  # τ is not ~0
    assert meta_of(runs[run])["steps"] == meta_of(runs["single"])["steps"] == STEPS


@pytest.mark.parametrize("run", ["ddp", "fsdp"])
def test_resumed_multi_process_run_is_bit_identical(run, runs):
    """Re-run from the step-7 checkpoint: every process follows rank 0's view of the folder (zero-shot
    scores kept, not re-evaluated by the others alone, which would hang), and the 3 steps left are the same
    steps: model, AdamW states (gathered from shards under FSDP) and the data position all restored."""
    resumed = load_task_vector(runs[run] / "task_vector.safetensors")
    whole = runs[f"{run}_whole"]
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    meta = meta_of(runs[run])
    assert meta["status"] == "finished" and meta["steps"] == STEPS
    assert len(list(runs[run].parent.rglob("meta.json"))) == len(RUNS)  # the workers wrote no run folder


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize(("length", "batch_size"), [(143, 71), (143, 256), (359, 71), (37, 8), (16, 4)])
def test_eval_sampler_partitions_into_equally_many_batches(world, length, batch_size, monkeypatch):
    """Every sample on exactly one process, none repeated; every process non-empty (a process without a
    batch would skip the evaluation and leave the others waiting in the metric sync) and with equally
    many batches (FSDP gathers parameters in each forward) of at most batch_size."""
    sampler = UnpaddedDistributedSampler(length, batch_size=batch_size)
    assert isinstance(sampler, DistributedSampler)  # what Lightning checks before replacing a sampler
    seen, counts = [], set()
    for rank in range(world):
        monkeypatch.setattr(sampler_module, "_world", lambda r=rank: (r, world))
        batches = list(sampler)
        assert len(sampler) == len(batches) and all(0 < len(b) <= batch_size for b in batches)
        counts.add(len(batches))
        seen += [i for b in batches for i in b]
    assert sorted(seen) == list(range(length))
    assert len(counts) == 1


@pytest.mark.parametrize("world", [2, 4])
def test_training_order_is_one_permutation_sharded(world, monkeypatch):
    """Step k of W processes × B samples takes the same samples as step k of one process × W·B: rank r
    takes positions r, r + W, ... of the epoch's one permutation (seed, epoch)."""
    length, batch, epoch = 1150, 8, 3

    def order(rank: int, processes: int) -> list[int]:
        monkeypatch.setattr(sampler_module, "_world", lambda: (rank, processes))
        sampler = sampler_module.ResumableSampler(length, seed=0)
        sampler.set_epoch(epoch)
        return [index for index, _ in sampler]

    single = order(0, 1)
    shards = [order(rank, world) for rank in range(world)]
    for step in range(length // (world * batch)):
        together = sorted(i for shard in shards for i in shard[step * batch : (step + 1) * batch])
        assert together == sorted(single[step * world * batch : (step + 1) * world * batch])


def test_eval_loaders_keep_their_sampler(cache_dir, tmp_path):
    """The DataModule's val/test loaders (cached or not) carry the unpadded sampler, a DistributedSampler,
    so Lightning's use_distributed_sampler leaves it in place."""
    cfg = compose_config(
        [*RUN, *RUNS["ddp"], *path_overrides(tmp_path, cache_dir, output_dir=tmp_path / "run")]
    )
    datamodule, _ = build(cfg, effective_lambda(cfg))
    datamodule.setup()
    loaders = [datamodule.val_dataloader(), datamodule.test_dataloader()]
    loaders.append(eval_dataloader(TensorDataset(torch.arange(143)), 71, shard=True))  # an uncached split
    for loader in loaders:
        assert isinstance(loader.sampler, UnpaddedDistributedSampler)
    batches = [len(labels) for _, labels in loaders[0]]
    assert batches == [71, 71, 1]  # one process: the split in batches of eval_batch_size


@pytest.mark.parametrize("name", ["cpu", "gpu", "ddp", "ddp_sim", "fsdp"])
@pytest.mark.parametrize("precision", [None, "bf16-mixed"])
def test_trainer_configs_compose(name, precision):
    """Each trainer config composes with the quickstart experiment, with its precision selectable; the
    strategies instantiate without a GPU."""
    overrides = ["experiment=quickstart", f"trainer={name}"]
    if precision:
        overrides.append(f"trainer.precision={precision}")
    trainer = compose_config(overrides).trainer
    assert trainer.precision == (precision or "32-true")
    expected = {
        "cpu": {"accelerator": "cpu", "devices": 1},
        "gpu": {"accelerator": "gpu", "devices": 1},
        "ddp": {"accelerator": "gpu", "devices": "auto", "num_nodes": 1, "strategy": "ddp"},
        "ddp_sim": {"accelerator": "cpu", "devices": 2, "num_nodes": 1},
        "fsdp": {"accelerator": "gpu", "devices": "auto", "num_nodes": 1},
    }[name]
    assert {k: trainer[k] for k in expected} == expected
    if name == "ddp_sim":
        strategy = instantiate(trainer.strategy)
        assert type(strategy).__name__ == "DDPStrategy" and strategy._process_group_backend == "gloo"
    if name == "fsdp":
        from torch.distributed.fsdp import ShardingStrategy

        from orthoreg_pl.training.strategies import FSDPStrategy

        strategy = instantiate(trainer.strategy)
        assert isinstance(strategy, FSDPStrategy)
        assert strategy.sharding_strategy == ShardingStrategy.SHARD_GRAD_OP
        assert strategy.kwargs["use_orig_params"] is True
        policy = strategy.kwargs["auto_wrap_policy"]
        assert {c.__name__ for c in policy._module_classes} == {"ResidualAttentionBlock"}
        fp32 = torch.float32
        assert strategy.mixed_precision.param_dtype == strategy.mixed_precision.buffer_dtype == fp32


def test_global_batch_must_divide_over_the_processes(cache_dir, tmp_path):
    """data.batch_size is the global batch: each of W processes takes batch_size / W, or a clear error."""
    from types import SimpleNamespace

    from hydra.utils import instantiate

    from orthoreg_pl import OrthoRegError

    cfg = compose_config(
        [*RUN, *RUNS["single"], *path_overrides(tmp_path, cache_dir, output_dir=tmp_path / "r")]
    )
    datamodule = instantiate(cfg.data)
    assert datamodule.per_process_batch() == 64  # no trainer: one process
    datamodule.trainer = SimpleNamespace(world_size=2)
    assert datamodule.per_process_batch() == 32
    datamodule.trainer = SimpleNamespace(world_size=3)
    with pytest.raises(OrthoRegError, match=r"data.batch_size=64 is the global batch .* 3 processes"):
        datamodule.per_process_batch()


def test_multirun_of_ddp_runs_each_job_once_in_its_own_folder(cache_dir, tmp_path):
    """`train.py -m trainer=ddp_sim`: Lightning starts rank 1 by re-running the command line, which in a
    multirun must be the job's own (runs/job.py: this_job_argv), not the sweep: two jobs, two folders, two runs."""
    runs = tmp_path / "runs"
    output = train_py(
        ["-m", *RUN, *RUNS["ddp"], "ortho.lam=0.1,1", f"paths.runs_dir={runs}"],
        cache_dir,
        tmp_path,
    )
    assert "multirun: 2 jobs: 2 finished, 0 skipped, 0 failed" in output
    metas = sorted(runs.rglob("meta.json"))
    assert len(metas) == 2 and {json.loads(m.read_text())["steps"] for m in metas} == {STEPS}
    assert len(list(runs.rglob("task_vector.safetensors"))) == 2
