"""Task vectors: the algebra on toy maps, run-folder and checkpoint I/O, finding runs, compatibility."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_classifier

from orthoreg_pl import OrthoRegError
from orthoreg_pl.modules import (
    AttentionOrthoFineTuning,
    LinearFineTuning,
    LoRAAttentionFineTuning,
    StandardFineTuning,
)
from orthoreg_pl.task_vectors import (
    TASK_VECTOR_FILE,
    TaskVector,
    TaskVectorInfo,
    check_compatible,
    cosine_matrix,
    find_runs,
    load_checkpoint_vector,
    load_run,
    mode_family,
    save_task_vector,
    sum_vectors,
)
from orthoreg_pl.utils.io import sha256_file


def info(task="Digits", mode="standard", space="weight", arch="ViT-B-32", pretrained="openai", source=""):
    return TaskVectorInfo(arch=arch, pretrained=pretrained, mode=mode, space=space, task=task, source=source)


def toy(a, b, task="Digits", **kwargs) -> TaskVector:
    """Two keys: a 2-vector and a 2x2 matrix (values chosen so every result below is exact)."""
    return TaskVector({"a": torch.tensor(a), "b": torch.tensor(b)}, info(task, **kwargs))


T1 = ([1.0, 2.0], [[0.0, 1.0], [2.0, 0.0]])
T2 = ([3.0, -1.0], [[1.0, 0.0], [0.0, -2.0]])


# ---- algebra --------------------------------------------------------------------------------------


def test_sum_scale_negate_sub():
    x, y = toy(*T1), toy(*T2, task="Shapes")
    s = x + y
    assert torch.equal(s["a"], torch.tensor([4.0, 1.0]))
    assert torch.equal(s["b"], torch.tensor([[1.0, 1.0], [2.0, -2.0]]))
    assert s.info.task == "Digits+Shapes" and s.info.arch == "ViT-B-32" and s.info.source == ""
    d = x - y
    assert torch.equal(d["a"], torch.tensor([-2.0, 3.0]))
    assert torch.equal(d["b"], torch.tensor([[-1.0, 1.0], [2.0, 2.0]]))
    n = -x
    assert torch.equal(n["a"], torch.tensor([-1.0, -2.0])) and n.info.task == "-Digits"
    assert torch.equal((2 * x)["b"], torch.tensor([[0.0, 2.0], [4.0, 0.0]]))
    assert torch.equal((x * 0.5)["a"], torch.tensor([0.5, 1.0])) and (x * 0.5).info.task == "0.5*Digits"
    assert torch.equal((x / 2)["a"], torch.tensor([0.5, 1.0]))
    assert torch.equal(sum_vectors([x, y, x])["a"], torch.tensor([5.0, 3.0]))
    assert sum([x, y])["a"].tolist() == [4.0, 1.0]  # the builtin sum starts from 0
    assert torch.equal(x["a"], torch.tensor([1.0, 2.0]))  # operands never modified
    with pytest.raises(OrthoRegError, match="zero"):
        x / 0


def test_mapping_protocol_and_restrict():
    x = toy(*T1)
    assert list(x) == ["a", "b"] and list(x.keys()) == ["a", "b"] and len(x) == 2 and x.numel() == 6
    r = x.restrict(["b"])
    assert list(r) == ["b"] and r["b"] is x["b"] and r.info == x.info
    with pytest.raises(OrthoRegError, match="nope"):
        x.restrict(["b", "nope"])


def test_norm_dot_cosine():
    x, y = toy(*T1), toy(*T2, task="Shapes")
    assert x.norm() == pytest.approx(math.sqrt(1 + 4 + 1 + 4))  # sqrt(10)
    assert x.dot(y) == pytest.approx(1 * 3 + 2 * -1 + 0 + 0 + 0 + 0)  # 1
    assert y.norm() == pytest.approx(math.sqrt(9 + 1 + 1 + 4))  # sqrt(15)
    assert x.cosine(y) == pytest.approx(1 / math.sqrt(150))
    assert x.cosine(-x) == pytest.approx(-1.0)
    m = cosine_matrix([x, y])
    assert m.dtype == torch.float64 and m.shape == (2, 2)
    assert torch.allclose(
        m, torch.tensor([[1, 1 / math.sqrt(150)], [1 / math.sqrt(150), 1]], dtype=torch.float64)
    )
    zero = x * 0
    with pytest.raises(OrthoRegError, match="zero"):
        x.cosine(zero)


def test_apply_to_and_to():
    x = toy(*T1)
    theta0 = {"a": torch.tensor([10.0, 20.0]), "b": torch.ones(2, 2), "c": torch.zeros(3)}
    out = x.apply_to(theta0, alpha=0.5)
    assert torch.equal(out["a"], torch.tensor([10.5, 21.0]))
    assert torch.equal(out["b"], torch.tensor([[1.0, 1.5], [2.0, 1.0]]))
    assert out["c"] is theta0["c"] and torch.equal(theta0["a"], torch.tensor([10.0, 20.0]))
    with pytest.raises(OrthoRegError, match=r"key\(s\) b are not in the state dict"):
        x.apply_to({"a": theta0["a"]})
    double = x.to(dtype=torch.float64)
    assert double["a"].dtype == torch.float64 and double.info == x.info
    with pytest.raises(OrthoRegError, match="'tangential'"):
        info(space="tangential")


def test_mismatched_keys_and_shapes_raise():
    x = toy(*T1)
    other = TaskVector({"a": torch.zeros(2), "c": torch.zeros(2, 2)}, info("Shapes"))
    with pytest.raises(OrthoRegError, match=r"only in .*: b.*only in .*: c"):
        x + other
    with pytest.raises(OrthoRegError, match="shape"):
        x + TaskVector({"a": torch.zeros(1), "b": torch.zeros(2, 2)})  # would broadcast silently
    with pytest.raises(OrthoRegError, match="'a'"):
        TaskVector({"a": torch.tensor([1, 2])})  # integer tensors are not task vectors


# ---- run folders ----------------------------------------------------------------------------------


def write_run(folder: Path, tensors: dict, **meta) -> Path:
    meta = {
        "task": "Digits",
        "mode": "standard",
        "task_vector_space": "weight",
        "arch": "orthoreg-tiny-vit",
        "pretrained": "random:0",
        "ortho": {"lam": 0.0},
        "seed": 0,
        **meta,
    }
    save_task_vector(
        folder / TASK_VECTOR_FILE,
        tensors,
        metadata={k: meta[k] for k in ("arch", "pretrained", "mode", "task")},
    )
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def run(tmp_path) -> tuple[Path, dict]:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "visual.proj": torch.randn(4, 3, generator=g),
        "visual.conv1.weight": torch.randn(2, 3, 2, 2, generator=g),
    }
    return write_run(tmp_path / "run", tensors, mode="standard_ortho", ortho={"lam": 10.0}), tensors


def test_load_run_round_trip(run):
    folder, tensors = run
    tv = load_run(folder)
    assert tv.keys() == tensors.keys() and all(torch.equal(tv[k], tensors[k]) for k in tensors)
    path = folder / TASK_VECTOR_FILE
    assert tv.info == TaskVectorInfo(
        arch="orthoreg-tiny-vit",
        pretrained="random:0",
        mode="standard_ortho",
        space="weight",
        task="Digits",
        source=str(path),
        checksum=sha256_file(path),
    )
    assert tv.info.meta["ortho"]["lam"] == 10.0


def test_load_run_errors_name_the_path(run, tmp_path):
    folder, _ = run
    path = folder / TASK_VECTOR_FILE
    with pytest.raises(OrthoRegError, match=str(tmp_path / "nowhere")):
        load_run(tmp_path / "nowhere")
    data = path.read_bytes()

    path.write_bytes(data[: len(data) - 7])  # truncated
    with pytest.raises(OrthoRegError, match=f"{path}.*safetensors"):
        load_run(folder)
    torch.save({"visual.proj": torch.zeros(4, 3)}, path)  # a pickle named .safetensors
    with pytest.raises(OrthoRegError, match=f"{path}.*safetensors"):
        load_run(folder)
    path.write_bytes(
        torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(1))
        .to(torch.uint8)
        .numpy()
        .tobytes()
    )
    with pytest.raises(OrthoRegError, match=f"{path}.*safetensors"):
        load_run(folder)
    path.unlink()
    with pytest.raises(OrthoRegError, match=f"{path} does not exist"):
        load_run(folder)
    (folder / "meta.json").unlink()
    with pytest.raises(OrthoRegError, match=f"{folder} has no meta.json"):
        load_run(folder)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(OrthoRegError, match=str(folder / "meta.json")):
        load_run(folder)


def test_load_run_refuses_a_vector_of_another_run(run):
    folder, _ = run
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "task": "Shapes"}))
    with pytest.raises(OrthoRegError, match="task='Digits'.*'Shapes'"):
        load_run(folder)


def test_find_runs(tmp_path):
    t = {"w": torch.zeros(2)}
    a = write_run(tmp_path / "std/Digits/seed0", t, task="Digits")
    b = write_run(
        tmp_path / "ortho/Digits/seed0", t, task="Digits", mode="standard_ortho", ortho={"lam": 10.0}
    )
    c = write_run(tmp_path / "ortho/Shapes/seed0", t, task="Shapes", mode="standard_ortho", ortho={"lam": 10})
    assert find_runs(tmp_path, mode="standard") == {"Digits": a}
    assert find_runs(tmp_path, mode="standard_ortho", lam=10) == {"Digits": b, "Shapes": c}
    assert find_runs(tmp_path, lam=10.0, tasks=["Shapes"]) == {"Shapes": c}
    assert list(find_runs(tmp_path, mode="standard_ortho", tasks=["Shapes", "Digits"])) == [
        "Shapes",
        "Digits",
    ]
    with pytest.raises(OrthoRegError, match="several finished runs") as err:
        find_runs(tmp_path, tasks=["Digits"])
    assert str(a) in str(err.value) and str(b) in str(err.value)
    with pytest.raises(OrthoRegError, match="Colors"):
        find_runs(tmp_path, mode="standard_ortho", tasks=["Digits", "Colors"])
    with pytest.raises(OrthoRegError, match="lam=1"):
        find_runs(tmp_path, lam=1.0)
    with pytest.raises(OrthoRegError, match="does not exist"):
        find_runs(tmp_path / "nowhere")


# ---- Lightning checkpoints ------------------------------------------------------------------------


def perturb(module, seed=3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def save_like_lightning(module, path: Path) -> Path:
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.mark.parametrize("cls", [StandardFineTuning, AttentionOrthoFineTuning, LinearFineTuning])
def test_load_checkpoint_vector(tmp_path, cls):
    """θ − θ0 of the trained parameters only (attention-only: its attention matrices)."""
    module = cls(make_classifier())
    perturb(module)
    ckpt = save_like_lightning(module, tmp_path / "last.ckpt")
    theta0 = make_classifier().state_dict()
    tv = load_checkpoint_vector(ckpt, theta0, info(mode=cls.mode, space=cls.task_vector_space))
    expected = module.task_vector()
    assert tv.keys() == expected.keys() and all(torch.equal(tv[k], expected[k]) for k in expected)
    assert tv.info.source == str(ckpt) and tv.info.checksum == sha256_file(ckpt)


def test_load_checkpoint_vector_lora_is_dense(tmp_path):
    module = LoRAAttentionFineTuning(make_classifier(), rank=4, alpha=8.0)
    perturb(module)
    ckpt = save_like_lightning(module, tmp_path / "lora.ckpt")
    theta0 = make_classifier().state_dict()
    tv = load_checkpoint_vector(ckpt, theta0, info(mode="lora_attn_ortho"))
    expected = module.task_vector()
    assert sorted(tv.keys()) == sorted(expected.keys())
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in tv
    assert all(torch.equal(tv[k], expected[k]) for k in expected)
    assert torch.linalg.matrix_rank(tv["visual.transformer.resblocks.0.attn.in_proj_weight"]) <= 4
    with pytest.raises(OrthoRegError, match="LoRA factors.*mode=standard"):
        load_checkpoint_vector(ckpt, theta0, info(mode="standard"))
    other_theta0 = make_classifier(init_seed=1).state_dict()
    with pytest.raises(OrthoRegError, match="frozen base weight"):
        load_checkpoint_vector(ckpt, other_theta0, info(mode="lora_attn"))


def test_load_checkpoint_vector_errors(tmp_path):
    theta0 = make_classifier().state_dict()
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(OrthoRegError, match=str(bad)):
        load_checkpoint_vector(bad, theta0, info())
    with pytest.raises(OrthoRegError, match="does not exist"):
        load_checkpoint_vector(tmp_path / "none.ckpt", theta0, info())
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"model.other.weight": torch.zeros(2)}}, foreign)
    with pytest.raises(OrthoRegError, match=f"{foreign}.*none of θ0's keys"):
        load_checkpoint_vector(foreign, theta0, info())


# ---- compatibility --------------------------------------------------------------------------------


def test_mode_family():
    assert mode_family("standard_ortho") == "standard" and mode_family("linear") == "linear"
    assert mode_family("linear-2_ortho") == "attn" and mode_family("loraatt") == "lora_attn"
    assert (
        mode_family("lora_attn_ortho") == "lora_attn" and mode_family("standard+standard_ortho") == "standard"
    )
    with pytest.raises(OrthoRegError, match="unknown mode 'bogus'"):
        mode_family("bogus")


@pytest.mark.parametrize(
    ("field", "kwargs", "values"),
    [
        ("arch", {"arch": "ViT-B-16"}, ("ViT-B-32", "ViT-B-16")),
        ("pretrained weights", {"pretrained": "laion2b"}, ("openai", "laion2b")),
        ("space", {"space": "tangent"}, ("weight", "tangent")),
        ("mode family", {"mode": "linear", "space": "tangent"}, ("standard", "linear")),
        ("mode family", {"mode": "attn"}, ("standard", "attn")),
    ],
)
def test_incompatible_vectors_name_what_differs(field, kwargs, values):
    x = toy(*T1, source="runs/a/task_vector.safetensors")
    y = toy(*T2, task="Shapes", source="runs/b/task_vector.safetensors", **kwargs)
    with pytest.raises(OrthoRegError) as err:
        check_compatible([x, x, y])
    message = str(err.value)
    assert f"{field} differs" in message
    assert f"{values[0]} (runs/a/" in message and f"{values[1]} (runs/b/" in message


def test_compatible_vectors_pass():
    check_compatible([toy(*T1), toy(*T2, task="Shapes", mode="standard_ortho")])
    check_compatible([TaskVector({"a": torch.zeros(1)}), TaskVector({"a": torch.ones(1)})])
    with pytest.raises(OrthoRegError, match="provenance"):
        check_compatible([toy(*T1), TaskVector(toy(*T2).tensors)])
    with pytest.raises(OrthoRegError, match=r"different keys.*only in .*: b"):
        check_compatible([toy(*T1), TaskVector({"a": torch.zeros(2)}, info("Shapes"))])
