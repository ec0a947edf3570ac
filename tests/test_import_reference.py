"""Importing the authors' released checkpoints (docs/import.md) as run folders, on the tiny model.

Each reference format is written here the way the reference code writes it: a pickled whole
``ImageEncoder`` (its class in a throwaway module that is gone again before the import), a positional
linearized state dict, an attention-only state dict, a LoRA state dict. Task vectors must equal the
expected ΔW exactly, a pickle that would run code must run nothing, and the imported folders must go
through merge.py's selection (find_runs, load_run, check_compatible) like native ones.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import TINY, compose_config, make_classifier

from orthoreg_pl import OrthoRegError
from orthoreg_pl.models import create_clip, pretrained_identity
from orthoreg_pl.modules import LoRAAttentionFineTuning, StandardFineTuning
from orthoreg_pl.report.tables import main as report_main
from orthoreg_pl.runs.folder import read_meta
from orthoreg_pl.task_vectors import TaskVector, TaskVectorInfo, check_compatible, find_runs, load_run
from orthoreg_pl.task_vectors.import_reference import import_mode_folder, main
from orthoreg_pl.task_vectors.reference_formats import arch_layout
from orthoreg_pl.task_vectors.reference_names import parse_mode_folder, parse_seed_folder, parse_task_folder
from orthoreg_pl.task_vectors.safe_unpickle import PickledObject, module_state_dict, safe_load
from orthoreg_pl.utils.io import sha256_file

SEED = 1993
RANDOM_INIT = pretrained_identity(None, 0)
MODELING = '''
import open_clip
import torch


class ImageEncoder(torch.nn.Module):
    """The reference's src.modeling.ImageEncoder: open_clip CLIP without its text transformer."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.train_preprocess = open_clip.image_transform(32, is_train=True)
        self.val_preprocess = open_clip.image_transform(32, is_train=False)
        self.cache_dir = None
        delattr(self.model, "transformer")

    def forward(self, images):
        return self.model.encode_image(images)
'''


@contextlib.contextmanager
def throwaway_modeling(tmp_path: Path) -> Iterator[ModuleType]:
    """A package ``<unique>.modeling`` importable only inside the block (as the authors' src.modeling)."""
    package = f"reference_src_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "code"
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "modeling.py").write_text(MODELING)
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(f"{package}.modeling")
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]


def mode_folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / f"checkpoints_{SEED}" / name
    folder.mkdir(parents=True)
    return folder


def perturbed(tensor: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return tensor + 0.01 * torch.randn(tensor.shape, generator=g)


def tiny_image_encoder_state(init_seed: int = 0) -> dict[str, torch.Tensor]:
    """``named_parameters`` of the tiny CLIP without its text transformer, in order."""
    clip = create_clip(TINY, None, init_seed=init_seed)
    del clip.transformer
    return {n: p.detach().clone() for n, p in clip.named_parameters()}


def visual(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("visual.")}


def attention_names() -> list[str]:
    return arch_layout(TINY).attention


# ---- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, mode, lr, lam, arch",
    [
        ("standard_1e-05_ViT-B-32", "standard", 1e-5, 0.0, "ViT-B-32"),
        ("standard_ortho_1e-05_lambda10.0_ViT-B-32", "standard_ortho", 1e-5, 10.0, "ViT-B-32"),
        ("linear_ortho_1e-05_lambda0.5_ViT-L-14", "linear_ortho", 1e-5, 0.5, "ViT-L-14"),
        ("linear-2_1e-05_ViT-B-16", "attn", 1e-5, 0.0, "ViT-B-16"),
        ("linear-2_ortho_3e-05_lambda1.0_ViT-B-16", "attn_ortho", 3e-5, 1.0, "ViT-B-16"),
        ("loraatt_0.0001_ViT-B-32", "lora_attn", 1e-4, 0.0, "ViT-B-32"),
        ("loraatt_ortho_0.0001_lambda1.0_orthoreg-tiny-vit", "lora_attn_ortho", 1e-4, 1.0, TINY),
    ],
)
def test_mode_folder_names(name, mode, lr, lam, arch):
    folder = parse_mode_folder(name)
    assert (folder.mode, folder.lr, folder.lam, folder.arch) == (mode, lr, lam, arch)
    assert folder.finetuned_file == (
        "finetuned.pt" if mode == "standard" else f"{folder.reference_mode}_finetuned.pt"
    )


@pytest.mark.parametrize(
    "name, complaint",
    [
        ("standard_ViT-B-32", "is not a mode folder"),
        ("finetuned_1e-05_ViT-B-32", "is not a mode folder"),
        ("standard_ortho_1e-05_ViT-B-32", "needs a _lambda"),
        ("standard_1e-05_lambda10.0_ViT-B-32", "must not have a _lambda"),
        ("standard_1e-05e_ViT-B-32", "learning rate '1e-05e'"),
        ("standard_ortho_1e-05_lambda1.0.0_ViT-B-32", "λ '1.0.0'"),
    ],
)
def test_malformed_mode_folder_names(name, complaint):
    with pytest.raises(OrthoRegError, match=complaint) as err:
        parse_mode_folder(name)
    assert name in str(err.value) and "{mode}_{lr}_{model}" in str(err.value)


def test_seed_and_task_folder_names():
    assert parse_seed_folder("checkpoints_1993") == 1993
    assert [parse_task_folder(f"{t}Val") for t in ("Cars", "SUN397", "EuroSAT")] == [
        "Cars",
        "SUN397",
        "EuroSAT",
    ]
    with pytest.raises(OrthoRegError, match="checkpoints_"):
        parse_seed_folder("checkpoints")
    for bad in ("Cars", "ImageNetVal", "CarsTest"):
        with pytest.raises(OrthoRegError, match=f"{bad}.*CarsVal"):
            parse_task_folder(bad)


# ---- the pickled whole module (standard modes) ------------------------------------------------------


@pytest.fixture
def standard_import(tmp_path) -> dict:
    """A standard mode folder of two tasks holding pickled ImageEncoders, with accuracy JSONs, imported."""
    src = mode_folder(tmp_path, f"standard_1e-05_{TINY}")
    expected = {}
    with throwaway_modeling(tmp_path) as modeling:
        package = modeling.__name__.split(".")[0]
        for i, task in enumerate(("Cars", "DTD")):
            zeroshot = modeling.ImageEncoder(create_clip(TINY, None, init_seed=0))
            finetuned = copy.deepcopy(zeroshot)
            with torch.no_grad():
                for p in finetuned.parameters():
                    p.copy_(perturbed(p, seed=10 + i))
            (src / f"{task}Val").mkdir()
            torch.save(zeroshot, src / f"{task}Val" / "zeroshot.pt")
            torch.save(finetuned, src / f"{task}Val" / "finetuned.pt")
            zs, ft = (dict(m.model.named_parameters()) for m in (zeroshot, finetuned))
            expected[task] = {n: (ft[n] - zs[n]).detach() for n in visual(zs)}
    (src / "ft_accuracies.json").write_text(
        json.dumps({"Cars": 0.8, "CarsVal": 0.82, "DTD": 0.7, "DTDVal": 0.71})
    )
    (src.parent / TINY).mkdir()
    (src.parent / TINY / "zeroshot_accuracies.json").write_text(json.dumps({"Cars": 0.5, "CarsVal": 0.52}))
    assert package not in sys.modules
    out = tmp_path / "reference_runs"
    outcomes = import_mode_folder(src, out, pretrained=None)
    assert package not in sys.modules  # the importer never imported the authors' module
    return {"src": src, "out": out, "outcomes": outcomes, "expected": expected}


def test_pickled_modules_give_the_exact_task_vectors(standard_import):
    expected = standard_import["expected"]
    outcomes = standard_import["outcomes"]
    assert [(o.task, o.skipped) for o in outcomes] == [("Cars", False), ("DTD", False)]
    for outcome in outcomes:
        vector = load_run(outcome.run_dir)
        assert sorted(vector) == sorted(expected[outcome.task])
        assert all(torch.equal(vector[k], expected[outcome.task][k]) for k in vector)
        assert all(vector[k].dtype == torch.float32 for k in vector)
        assert (vector.info.mode, vector.info.space, vector.info.arch) == ("standard", "weight", TINY)
        assert vector.info.pretrained == RANDOM_INIT


def test_imported_meta_records_settings_accuracy_and_provenance(standard_import):
    src, cars = standard_import["src"], standard_import["outcomes"][0].run_dir
    assert cars.relative_to(standard_import["out"]).parts[:4] == (TINY, "standard", "Cars", cars.name)
    meta = read_meta(cars)
    assert meta["status"] == "finished" and meta["seed"] == SEED and meta["ortho"]["lam"] == 0.0
    assert meta["task_vector_sha256"] == sha256_file(cars / "task_vector.safetensors")
    assert meta["accuracy"] == {
        "zeroshot": {"val": 0.52, "test": 0.5},
        "finetuned": {"val": 0.82, "test": 0.8},
    }
    settings = meta["identity"]["settings"]
    assert settings["optim.lr"] == 1e-5 and settings["mode.name"] == "standard" and settings["seed"] == SEED
    imported = meta["imported_from"]
    assert imported["folder"] == str(src.resolve()) and imported["reference_mode"] == "standard"
    assert imported["files"] == {n: sha256_file(src / "CarsVal" / n) for n in ("zeroshot.pt", "finetuned.pt")}
    assert set(imported["accuracy_files"]) == {"ft_accuracies.json", f"../{TINY}/zeroshot_accuracies.json"}
    assert read_meta(standard_import["outcomes"][1].run_dir)["accuracy"]["zeroshot"] is None  # no DTD entry


def test_merge_selection_accepts_imported_runs(standard_import):
    """What merge.py does (evaluation/pipeline.py _load_vectors) on the imported folder."""
    out = standard_import["out"]
    runs = find_runs(
        out,
        arch=TINY,
        mode="standard",
        lam=0.0,
        tasks=["Cars", "DTD"],
        seed=SEED,
        settings={"optim.lr": 1e-5},
    )
    vectors = [load_run(path) for path in runs.values()]
    check_compatible(vectors)
    assert {v.info.pretrained for v in vectors} == {pretrained_identity(None, 0)}
    native = StandardFineTuning(make_classifier()).task_vector()
    info = TaskVectorInfo(arch=TINY, pretrained=RANDOM_INIT, mode="standard", space="weight", task="Digits")
    check_compatible([*vectors, TaskVector(native, info)])  # same keys, shapes, space as a native run
    with pytest.raises(OrthoRegError, match="no finished run"):
        find_runs(out, arch=TINY, mode="standard", tasks=["Cars"], seed=SEED, settings={"optim.lr": 3e-5})


def test_merge_py_scores_imported_runs(standard_import, fake_data, cache_dir, tmp_path):
    """The whole merge on the imported folder (fake Cars and DTD trees): the single-task protocol scores
    θ0 + τ of the authors' vectors, and their recorded figures are kept as the cross-check."""
    from omegaconf import open_dict

    from orthoreg_pl.evaluation.pipeline import run_merge

    data_root = next(iter(fake_data.values())).root
    cfg = compose_config(
        [
            "experiment=quickstart_addition", "source=reference", "mode=standard", "tasks=[Cars,DTD]",
            "protocol=single_task", f"paths.runs_dir={standard_import['out']}", f"paths.cache_dir={cache_dir}",
            f"paths.data_root={data_root}", f"paths.output_dir={tmp_path / 'report'}",
        ],
        config_name="merge",
    )  # fmt: skip
    with open_dict(cfg):
        cfg.merge_method_name = "task_arithmetic"
    assert cfg.seed == SEED  # source=reference selects the authors' seed
    report = run_merge(cfg)
    assert set(report["per_task"]) == {"Cars", "DTD"}
    assert report["per_task"]["Cars"]["finetuned_test"] == report["references"]["Cars"]["finetuned"]["test"]
    assert {t: i["checksum"] for t, i in report["inputs"].items()} == {
        o.task: sha256_file(o.run_dir / "task_vector.safetensors") for o in standard_import["outcomes"]
    }
    compared = {(d["task"], d["reference"]) for d in report["reference_check"]["beyond_tolerance"]}
    assert ("Cars", "finetuned") in compared  # the JSON's 0.80 is not what this θ0 + τ scores here


def test_reimport_skips_identical_folders_and_refuses_changed_files(standard_import):
    src, out = standard_import["src"], standard_import["out"]
    cars = standard_import["outcomes"][0].run_dir
    before = (cars / "meta.json").read_text()
    again = import_mode_folder(src, out, pretrained=None)
    assert [(o.task, o.skipped) for o in again] == [("Cars", True), ("DTD", True)]
    assert (cars / "meta.json").read_text() == before
    torch.save({"visual.proj": torch.zeros(1)}, src / "DTDVal" / "finetuned.pt")
    with pytest.raises(OrthoRegError, match="does not hold this import"):
        import_mode_folder(src, out, pretrained=None)


def test_report_shows_imported_and_native_runs_side_by_side(standard_import, tmp_path, capsys):
    native = tmp_path / "runs" / "native-cars"
    native.mkdir(parents=True)
    meta = read_meta(standard_import["outcomes"][0].run_dir)
    for key in ("imported_from", "imported_at"):
        del meta[key]
    (native / "meta.json").write_text(json.dumps({**meta, "steps": 12}))
    assert report_main([str(tmp_path / "runs"), str(standard_import["out"])]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if "Cars" in line]
    assert len(rows) == 2 and "native" in rows[0] and "reference" in rows[1] and "12" in rows[0]


def test_restricted_unpickler_rebuilds_the_state_dict_of_a_pickled_module(tmp_path):
    with throwaway_modeling(tmp_path) as modeling:
        encoder = modeling.ImageEncoder(create_clip(TINY, None, init_seed=0))
        torch.save(encoder, tmp_path / "zeroshot.pt")
        qualname = f"{modeling.__name__}.ImageEncoder"
    record = safe_load(tmp_path / "zeroshot.pt")
    assert isinstance(record, PickledObject) and record.qualname == qualname
    tensors, parameters = module_state_dict(record)
    expected = encoder.state_dict()
    assert list(tensors) == list(expected) and all(torch.equal(tensors[k], expected[k]) for k in expected)
    assert parameters == {n for n, _ in encoder.named_parameters()}
    resize = record.attributes()["val_preprocess"].attributes()["transforms"][0]
    assert resize.name == "Resize" and resize.attributes()["interpolation"].args == ("bicubic",)  # recorded


def test_unreadable_files_are_reported(tmp_path):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(OrthoRegError, match="not a torch.save zip file"):
        safe_load(tmp_path / "text.pt")
    torch.save({"a": torch.ones(1000)}, tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2] + data[-200:])
    with pytest.raises(OrthoRegError, match="cut.pt"):
        safe_load(tmp_path / "cut.pt")


# ---- pickles that would run code ---------------------------------------------------------------------


class _Payload:
    """An object whose unpickling calls ``target(*args)`` (what a crafted checkpoint does)."""

    def __init__(self, target, *args):
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def _payloads(marker: Path) -> dict[str, _Payload]:
    return {
        f"{os.system.__module__}.system": _Payload(os.system, f"touch {marker}"),
        "builtins.exec": _Payload(exec, f"open({str(marker)!r}, 'w').write('x')"),
        f"{open.__module__}.open": _Payload(open, str(marker), "w"),
    }


@pytest.mark.parametrize("which", [0, 1, 2])
def test_a_pickle_that_would_run_code_runs_nothing(tmp_path, which):
    marker = tmp_path / "ran"
    name, payload = list(_payloads(marker).items())[which]
    path = tmp_path / "finetuned.pt"
    torch.save({"model.visual.proj": torch.ones(2, 2), "extra": payload}, path)
    with pytest.raises(OrthoRegError, match=f"{re.escape(str(path))}.*calls {re.escape(name)}"):
        safe_load(path)
    assert not marker.exists()


def test_cli_refuses_a_code_running_checkpoint_and_writes_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    src = mode_folder(tmp_path, f"standard_1e-05_{TINY}")
    state = {"model." + k: v for k, v in tiny_image_encoder_state().items()}
    for task in ("Cars", "DTD"):
        (src / f"{task}Val").mkdir()
        torch.save(state, src / f"{task}Val" / "zeroshot.pt")
        torch.save(state, src / f"{task}Val" / "finetuned.pt")
    torch.save({**state, "x": _Payload(os.system, f"touch {marker}")}, src / "DTDVal" / "finetuned.pt")
    out = tmp_path / "out"
    assert main(["--src", str(src), "--out", str(out), "--pretrained", "null"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and f"{os.system.__module__}.system" in err
    assert not marker.exists() and not out.exists()  # Cars converted fine but nothing was left behind


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    bad = mode_folder(tmp_path, f"standard_ortho_1e-05_{TINY}")
    out = tmp_path / "out"
    assert main(["--src", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and bad.name in err and "_lambda" in err
    good = mode_folder(tmp_path, f"standard_1e-05_{TINY}")
    assert main(["--src", str(good), "--out", str(out)]) == 2  # openai is no tag of the tiny model
    assert "'openai' is neither an open_clip tag" in capsys.readouterr().err
    assert main(["--src", str(good), "--out", str(out), "--pretrained", "null"]) == 2
    assert "holds no task folders" in capsys.readouterr().err
    assert not out.exists()


# ---- state-dict formats ------------------------------------------------------------------------------


def test_linear_positional_state_dict(tmp_path):
    """``model.params.{i}`` / ``model.params0.{i}``: i-th parameter of CLIP without its text transformer."""
    src = mode_folder(tmp_path, f"linear_ortho_1e-05_lambda0.5_{TINY}")
    theta0 = tiny_image_encoder_state()
    theta = {n: perturbed(p, seed=i) for i, (n, p) in enumerate(theta0.items())}

    def positional(params: dict, params0: dict) -> dict:
        state = {f"model.params.{i}": p for i, p in enumerate(params.values())}
        return {
            **state,
            **{f"model.params0.{i}": p for i, p in enumerate(params0.values())},
            "model_name": "ImageEncoder",
        }

    (src / "MNISTVal").mkdir()
    torch.save(positional(theta0, theta0), src / "MNISTVal" / "linear_ortho_zeroshot.pt")
    torch.save(positional(theta, theta0), src / "MNISTVal" / "linear_ortho_finetuned.pt")
    [outcome] = import_mode_folder(src, tmp_path / "out", pretrained=None)
    vector = load_run(outcome.run_dir)
    assert sorted(vector) == sorted(visual(theta0))  # text-tower leftovers dropped
    assert all(torch.equal(vector[n], theta[n] - theta0[n]) for n in vector)
    assert (vector.info.mode, vector.info.space, vector.info.meta["ortho"]["lam"]) == (
        "linear_ortho",
        "tangent",
        0.5,
    )

    names = list(theta0)
    swapped = dict(theta)
    a, b = names.index("visual.proj"), names.index("visual.positional_embedding")
    swapped[names[a]], swapped[names[b]] = theta[names[b]], theta[names[a]]
    torch.save(positional(swapped, theta0), src / "MNISTVal" / "linear_ortho_finetuned.pt")
    with pytest.raises(OrthoRegError, match=rf"params\.{min(a, b)} has shape .* position {min(a, b)}"):
        import_mode_folder(src, tmp_path / "out2", pretrained=None)
    del theta[names[-1]], theta0[names[-1]]
    torch.save(positional(theta, theta0), src / "MNISTVal" / "linear_ortho_finetuned.pt")
    with pytest.raises(OrthoRegError, match=f"holds {len(names) - 1} positional parameters"):
        import_mode_folder(src, tmp_path / "out2", pretrained=None)


def test_attention_only_state_dict(tmp_path):
    src = mode_folder(tmp_path, f"linear-2_ortho_1e-05_lambda1.0_{TINY}")
    zeroshot = {"model." + k: v for k, v in tiny_image_encoder_state().items()}
    finetuned = {
        k: perturbed(v, 3) if k.endswith(("in_proj_weight", "out_proj.weight")) else v
        for k, v in zeroshot.items()
    }
    (src / "SVHNVal").mkdir()
    torch.save(zeroshot, src / "SVHNVal" / "linear-2_ortho_zeroshot.pt")
    torch.save(finetuned, src / "SVHNVal" / "linear-2_ortho_finetuned.pt")
    [outcome] = import_mode_folder(src, tmp_path / "out", pretrained=None)
    vector = load_run(outcome.run_dir)
    assert sorted(vector) == sorted(attention_names())
    assert all(torch.equal(vector[n], finetuned["model." + n] - zeroshot["model." + n]) for n in vector)
    assert (vector.info.mode, vector.info.space) == ("attn_ortho", "weight")

    finetuned["model.visual.transformer.resblocks.0.mlp.c_fc.weight"] += 1
    torch.save(finetuned, src / "SVHNVal" / "linear-2_ortho_finetuned.pt")
    with pytest.raises(OrthoRegError, match="mlp.c_fc.weight beyond the attention matrices"):
        import_mode_folder(src, tmp_path / "out2", pretrained=None)


def lora_state(rank: int = 4, seed: int = 0) -> tuple[dict, dict]:
    """A LoraATTImageEncoder state dict (the reference's key layout) and the factors per base weight."""
    base = {"model." + k: v for k, v in tiny_image_encoder_state().items()}
    g = torch.Generator().manual_seed(seed)
    state, factors = {}, {}
    for key, value in base.items():
        block, _, rest = key.partition(".attn.")
        if rest == "in_proj_weight":
            owner = f"{block}.attn.lora_in_proj_layer"
        elif rest == "out_proj.weight":
            owner = f"{block}.attn.out_proj"
        else:
            if rest not in ("in_proj_bias", "out_proj.bias"):
                state[key] = value
            continue
        out_features, in_features = value.shape
        A, B = torch.randn(rank, in_features, generator=g), torch.randn(out_features, rank, generator=g)
        bias_key = f"{block}.attn.{'in_proj_bias' if rest == 'in_proj_weight' else 'out_proj.bias'}"
        state.update(
            {
                f"{owner}.mlp.weight": value,
                f"{owner}.mlp.bias": base[bias_key],
                f"{owner}.lora_A": A,
                f"{owner}.lora_B": B,
            }
        )
        factors[key.removeprefix("model.")] = (A, B)
    return state, factors


@pytest.mark.parametrize("alpha, folder", [(None, "loraatt_0.0001"), (4.0, "loraatt_ortho_0.0001_lambda1.0")])
def test_lora_state_dict_gives_dense_deltas(tmp_path, alpha, folder):
    src = mode_folder(tmp_path, f"{folder}_{TINY}")
    state, factors = lora_state(rank=4)
    prefix = folder.split("_0.0001")[0]
    (src / "GTSRBVal").mkdir()
    torch.save(state, src / "GTSRBVal" / f"{prefix}_finetuned.pt")
    [outcome] = import_mode_folder(src, tmp_path / "out", pretrained=None, lora_alpha=alpha)
    vector = load_run(outcome.run_dir)
    scale = (alpha or 8.0) / 4
    assert sorted(vector) == sorted(attention_names())
    assert all(torch.equal(vector[n], scale * (factors[n][1] @ factors[n][0])) for n in vector)
    assert vector.info.meta["lora"] == {"rank": 4, "alpha": alpha or 8.0}
    native = LoRAAttentionFineTuning(make_classifier(), rank=4, alpha=8.0).task_vector()
    info = TaskVectorInfo(arch=TINY, pretrained=RANDOM_INIT, mode="lora_attn", space="weight", task="Digits")
    check_compatible([vector, TaskVector(native, info)])


def test_lora_errors_name_the_module(tmp_path):
    src = mode_folder(tmp_path, f"loraatt_0.0001_{TINY}")
    state, _ = lora_state()
    del state["model.visual.transformer.resblocks.1.attn.out_proj.lora_B"]
    (src / "DTDVal").mkdir()
    torch.save(state, src / "DTDVal" / "loraatt_finetuned.pt")
    with pytest.raises(OrthoRegError, match=r"resblocks\.1\.attn\.out_proj has \['lora_A'\] but needs both"):
        import_mode_folder(src, tmp_path / "out", pretrained=None)


# ---- configuration -----------------------------------------------------------------------------------


def test_source_config_group_selects_the_runs_folder(tmp_path):
    defaults = (Path(__file__).resolve().parent.parent / "configs" / "merge.yaml").read_text()
    add = "" if "- source:" in defaults else "+"
    paths = [f"paths.root_dir={tmp_path}"]
    for source, folder in (("reference", "reference_runs"), ("native", "runs")):
        cfg = compose_config([f"{add}source={source}", *paths], config_name="merge")
        assert cfg.paths.runs_dir == f"{tmp_path}/{folder}"
