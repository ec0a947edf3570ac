"""The real Hydra configs compose, resolve, and carry the recipe of docs/method.md §4."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
from conftest import CONFIG_DIR, PROJECT_ROOT, compose_config, path_overrides
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from orthoreg_pl.config.groups import experiment_kind
from orthoreg_pl.models import check_architecture
from orthoreg_pl.modules import MODES, FineTuneModule

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# every experiment names the script that takes it
TRAIN_EXPERIMENTS = [e for e in EXPERIMENTS if experiment_kind(e) == "train"]
MERGE_EXPERIMENTS = [e for e in EXPERIMENTS if experiment_kind(e) == "merge"]
CAMPAIGN_EXPERIMENTS = [e for e in EXPERIMENTS if experiment_kind(e) == "campaign"]
SEARCHES = sorted(p.stem for p in (CONFIG_DIR / "search").glob("*.yaml"))
MODE_FILES = sorted(p.stem for p in (CONFIG_DIR / "mode").glob("*.yaml"))
MODEL_FILES = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
DATASET_FILES = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))


@pytest.fixture
def paths(tmp_path, cache_dir):
    return path_overrides(tmp_path, cache_dir, output_dir=tmp_path / "run")


def resolve_all(cfg) -> dict:
    """Resolve every interpolation (as train() does when it writes config.yaml)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def test_config_groups_are_not_empty():
    assert EXPERIMENTS and len(MODE_FILES) >= 2 and MODEL_FILES and DATASET_FILES
    assert len(TRAIN_EXPERIMENTS) + len(MERGE_EXPERIMENTS) + len(CAMPAIGN_EXPERIMENTS) == len(EXPERIMENTS)
    assert {"finetune_vitb32", "finetune_vitb16", "finetune_vitl14"} <= set(TRAIN_EXPERIMENTS)
    assert {"campaign_quickstart", "campaign_vitb32", "campaign_vitb16", "campaign_vitl14"} <= set(
        CAMPAIGN_EXPERIMENTS
    )


@pytest.mark.parametrize("experiment", CAMPAIGN_EXPERIMENTS)
def test_every_campaign_experiment_composes(experiment, tmp_path):
    """python -m orthoreg_pl.campaign experiment=<name>: its train and merge experiments exist and match."""
    cfg = compose_config([f"experiment={experiment}", f"paths.root_dir={tmp_path}"], config_name="campaign")
    resolved = resolve_all(cfg)
    assert experiment_kind(resolved["experiments"]["train"]) == "train"
    for protocol in ("addition", "negation"):
        assert experiment_kind(resolved["experiments"][protocol]) == "merge"
    assert resolved["datasets"] and resolved["lambdas"] and resolved["objective"]["direction"] == "maximize"


@pytest.mark.parametrize("search", SEARCHES)
def test_every_search_composes_into_the_campaign(search, tmp_path):
    cfg = compose_config(
        ["experiment=campaign_quickstart", f"search={search}", f"paths.root_dir={tmp_path}"],
        config_name="campaign",
    )
    assert cfg.search.lam.low < cfg.search.lam.high and cfg.search.n_trials >= 1 and cfg.search.baseline
    assert cfg.search.objectives == ("pareto" if "pareto" in search else "single")


def test_vitl14_recipe_accumulates_two_micro_batches_of_64_without_dividing_the_loss(paths):
    cfg = compose_config(["experiment=finetune_vitl14", "dataset=mnist", *paths])
    assert cfg.model.arch == "ViT-L-14" and cfg.data.batch_size == 64
    assert cfg.trainer.accumulate_grad_batches == 2 and cfg.optim.sum_accumulated_loss is True
    assert cfg.optim.lr == 1e-5 and cfg.trainer.precision == "32-true"


@pytest.mark.parametrize("experiment", TRAIN_EXPERIMENTS)
def test_every_experiment_composes(experiment, paths):
    cfg = compose_config([f"experiment={experiment}", "dataset=digits", *paths])
    resolved = resolve_all(cfg)
    assert resolved["dataset"]["name"] == "Digits"


@pytest.mark.parametrize("experiment", MERGE_EXPERIMENTS)
def test_every_merge_experiment_composes(experiment, paths):
    """python merge.py experiment=<name>: the protocol, the tasks and a merge method resolve."""
    cfg = compose_config([f"experiment={experiment}", *paths], config_name="merge")
    with open_dict(cfg):  # ${hydra:runtime.choices...} exists only inside the app
        cfg.merge_method_name = "task_arithmetic"
    resolved = resolve_all(cfg)
    assert resolved["protocol"]["name"] in ("addition", "negation", "analysis") and resolved["tasks"]
    assert callable(instantiate(cfg.merge_method))
    if experiment.endswith(("vitb32", "vitb16", "vitl14")):
        assert resolved["tasks"] == ["Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SUN397", "SVHN"]
    if resolved["protocol"]["name"] == "negation":
        assert (
            resolved["protocol"]["control"] in ("ImageNet", "Quadrants")
            and resolved["protocol"]["threshold"] == 0.95
        )


@pytest.mark.parametrize("mode", MODE_FILES)
def test_every_mode_composes_and_names_its_module(mode, paths):
    """mode.module instantiates the LightningModule of that mode, and mode.penalized matches it."""
    cfg = compose_config([f"mode={mode}", "dataset=digits", *paths])
    resolve_all(cfg)
    assert cfg.mode.name == mode
    factory = instantiate(cfg.mode.module)
    cls = factory.func
    assert issubclass(cls, FineTuneModule) and cls.mode == mode and MODES[mode] is cls
    assert cfg.mode.penalized == cls.uses_penalty


@pytest.mark.parametrize("model", MODEL_FILES)
def test_every_model_composes_and_names_a_real_architecture(model, paths):
    """model.arch is an open_clip architecture and model.pretrained one of its tags, a shipped file, or null."""
    cfg = compose_config([f"model={model}", "dataset=digits", *paths])
    resolve_all(cfg)
    check_architecture(cfg.model.arch)
    if cfg.model.pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(cfg.model.arch)
        assert cfg.model.pretrained in tags or Path(cfg.model.pretrained).is_file()


@pytest.mark.parametrize("dataset", DATASET_FILES)
def test_every_dataset_names_a_registered_task(dataset, paths):
    from orthoreg_pl.data import get_task

    cfg = compose_config([f"dataset={dataset}", *paths])
    assert get_task(cfg.dataset.name).name == cfg.dataset.name
    assert cfg.data.task == cfg.dataset.name and cfg.trainer.max_epochs == cfg.dataset.epochs


def test_quickstart_experiment(paths):
    """The CPU quickstart: tiny random-init model, small λ, its own runs folder."""
    cfg = compose_config(["experiment=quickstart", "mode=standard_ortho", *paths])
    assert cfg.model.arch == "orthoreg-tiny-vit" and cfg.model.pretrained is None
    assert cfg.ortho.lam == 0.1
    assert cfg.mode.tag == "standard_ortho_lam0.1"
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.data.num_workers == 0
    assert list(cfg.logger) == ["csv"]


def test_quickstart_runs_dir_default(tmp_path):
    """Without overrides, quickstart runs go under <root>/runs/quickstart, named by arch/mode/task/seed
    and the hash of the run's identity."""
    cfg = compose_config(
        ["experiment=quickstart", "mode=standard_ortho", f"paths.root_dir={tmp_path}"], keep_hydra=True
    )
    assert cfg.paths.runs_dir == f"{tmp_path}/runs/quickstart"
    assert len(cfg.identity) == 10 and int(cfg.identity, 16) >= 0
    assert (
        cfg.hydra.run.dir
        == f"{tmp_path}/runs/quickstart/orthoreg-tiny-vit/standard_ortho_lam0.1/Digits/seed0-{cfg.identity}"
    )


def test_standard_ortho_recipe_defaults(paths):
    """mode=standard_ortho alone is the reference recipe: λ=10, AdamW lr 1e-5 wd 0.1, 500 warm-up, clip 1, fp32."""
    cfg = compose_config(["mode=standard_ortho", "dataset=digits", *paths])
    assert cfg.ortho.lam == 10.0 and cfg.ortho.norm == "fro" and cfg.ortho.gram == "min_side"
    assert cfg.optim.lr == 1e-5 and cfg.optim.weight_decay == 0.1 and cfg.optim.warmup_steps == 500
    assert list(cfg.optim.betas) == [0.9, 0.999] and cfg.optim.eps == 1e-8
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.gradient_clip_algorithm == "norm"
    assert cfg.trainer.precision == "32-true"
    assert cfg.data.batch_size == 128 and cfg.data.split_seed == 0
    assert cfg.model.arch == "ViT-B-32" and cfg.model.pretrained == "openai"


def test_command_line_lambda_wins(paths):
    cfg = compose_config(["experiment=quickstart", "mode=standard_ortho", "ortho.lam=3", *paths])
    assert cfg.ortho.lam == 3 and cfg.mode.tag == "standard_ortho_lam3"


def test_dataset_is_required(paths):
    """train.yaml leaves dataset unset: validation refuses the config, listing the tasks (never a silent pick)."""
    from orthoreg_pl.errors import OrthoRegError
    from orthoreg_pl.training.validation import validate_train

    cfg = compose_config(list(paths))
    with pytest.raises(OrthoRegError, match="dataset is not set") as err:
        validate_train(cfg)
    assert "digits" in str(err.value)  # the options are listed


def test_env_paths(monkeypatch, tmp_path):
    """ORTHOREG_CACHE_DIR / ORTHOREG_DATA_ROOT move the cache and the data root (shared cluster setups)."""
    monkeypatch.setenv("ORTHOREG_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("ORTHOREG_DATA_ROOT", str(tmp_path / "d"))
    cfg = compose_config(["dataset=digits", f"paths.root_dir={PROJECT_ROOT}"])
    assert Path(cfg.paths.cache_dir) == tmp_path / "c" and Path(cfg.paths.data_root) == tmp_path / "d"
    assert cfg.data.cache_dir == str(tmp_path / "c")


def test_a_weights_file_is_identified_by_its_content_not_its_place(tmp_path, paths):
    """model.pretrained as a file: the run identity holds its name and sha256, so the same weights in two
    checkouts are one run, and weights changed in place are another."""
    from orthoreg_pl.config.resolvers import run_hash

    first, second = tmp_path / "a" / "w.safetensors", tmp_path / "b" / "w.safetensors"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(b"weights")

    def identity(path):
        return run_hash(_root_=compose_config(["experiment=quickstart", f"model.pretrained={path}", *paths]))

    assert identity(first) == identity(second)
    second.write_bytes(b"other weights")
    assert identity(first) != identity(second)


def test_pyproject_lists_every_package_and_installs_callbacks_under_orthoreg_pl():
    """pyproject.toml lists the packages by hand (callbacks/ is mapped to orthoreg_pl.callbacks): a new
    package folder must be listed, and no top-level ``callbacks`` is installed."""
    import importlib

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    setuptools = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        ".".join(p.parent.relative_to(PROJECT_ROOT).parts)
        for p in (PROJECT_ROOT / "orthoreg_pl").rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == folders | {"orthoreg_pl.callbacks"}
    assert setuptools["package-dir"] == {"orthoreg_pl.callbacks": "callbacks"}
    module = importlib.import_module("orthoreg_pl.callbacks.orthogonality_monitor")
    assert Path(module.__file__).parent == PROJECT_ROOT / "callbacks"


def test_a_checkout_without_install_maps_callbacks_too():
    """With the checkout on sys.path and pip's editable finder gone (a bare GPU machine, PYTHONPATH=.),
    orthoreg_pl maps callbacks/ to orthoreg_pl.callbacks itself."""
    import subprocess
    import sys

    code = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]; "
        "import orthoreg_pl.callbacks.step_timer as m; print(m.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert Path(out.stdout.strip()) == PROJECT_ROOT / "callbacks" / "step_timer.py"


def test_what_the_command_line_checks_without_torch_agrees_with_the_code():
    """The checks that run before torch loads read the config files and a few constants: they must name
    what Lightning, the data registry and the DataModule accept."""
    from typing import get_args

    from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    from orthoreg_pl.config.groups import dataset_of_task, preprocess_keys, task_names
    from orthoreg_pl.config.rules import PRECISIONS
    from orthoreg_pl.data.datamodule import PREPROCESS_KEYS
    from orthoreg_pl.data.registry import task_names as registered

    assert set(PRECISIONS) == {*get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS)}
    assert task_names() == sorted(registered())
    assert dataset_of_task()["Digits"] == "digits" and dataset_of_task()["ImageNet"] == "imagenet"
    assert preprocess_keys() == PREPROCESS_KEYS
