"""The tiny CLIP pre-trained on the CPU: a deterministic recipe, shipped weights that know something,
and zero-shot heads built from its text tower by the same code as for real CLIP."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import PROJECT_ROOT, compose_config, path_overrides

from orthoreg_pl.data.tiny_world import WorldRecipe, make_world
from orthoreg_pl.models import create_clip, load_or_build_head, pretrained_identity
from orthoreg_pl.models.pretrain_tiny import (
    TINY_CLIP_ARCH,
    WEIGHTS_FILE,
    PretrainConfig,
    main,
    zeroshot_accuracy,
)
from orthoreg_pl.utils.io import sha256_file


@pytest.fixture(scope="module")
def tiny_clip() -> torch.nn.Module:
    return create_clip(TINY_CLIP_ARCH, str(WEIGHTS_FILE)).eval()


def test_world_is_a_pure_function_of_its_recipe():
    a_images, a_captions = make_world(WorldRecipe(seed=3, num_images=40))
    b_images, b_captions = make_world(WorldRecipe(seed=3, num_images=40))
    c_images, _ = make_world(WorldRecipe(seed=4, num_images=40))
    assert (a_images == b_images).all() and a_captions == b_captions
    assert not (a_images == c_images).all()
    assert a_images.shape == (40, 32, 32, 3) and all(c.endswith(".") for c in a_captions)


def test_pretraining_is_deterministic(tmp_path):
    """Same settings, same bytes: the recipe, not luck, names the shipped weights."""
    args = ["--steps", "3", "--num-images", "96"]
    first = main([*args, "--out", str(tmp_path / "a.safetensors")])
    second = main([*args, "--out", str(tmp_path / "b.safetensors")])
    assert first["sha256"] == second["sha256"] == sha256_file(tmp_path / "a.safetensors")
    assert first["config"]["steps"] == 3 and first["config"]["world"]["num_images"] == 96
    third = main([*args, "--seed", "1", "--out", str(tmp_path / "c.safetensors")])
    assert third["sha256"] != first["sha256"]


def test_shipped_weights_match_their_manifest():
    manifest = json.loads(WEIGHTS_FILE.with_suffix(".manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(WEIGHTS_FILE)
    assert manifest["arch"] == TINY_CLIP_ARCH and WEIGHTS_FILE.stat().st_size <= 10 * 2**20
    assert manifest["config"]["steps"] == PretrainConfig().steps
    assert manifest["config"]["world"] == WorldRecipe().as_dict()


@pytest.mark.parametrize(
    ("task", "chance"),
    [("Digits", 0.1), ("Shapes", 0.2), ("Colors", 1 / 6), ("Patterns", 0.25), ("Quadrants", 0.25)],
)
def test_shipped_tiny_clip_classifies_zero_shot(tiny_clip, cache_dir, task, chance):
    """Pre-training taught it the quickstart attributes: zero-shot well above chance."""
    assert zeroshot_accuracy(tiny_clip, task, cache_dir) >= chance + 0.2


def test_heads_from_its_text_tower_equal_a_direct_computation(tiny_clip, cache_dir):
    classnames, templates = ["circle", "square", "ring"], ["a drawing of a {c}.", "a {c} shape."]
    head = load_or_build_head(
        tiny_clip,
        TINY_CLIP_ARCH,
        pretrained_identity(str(WEIGHTS_FILE), 0),
        "TinyClipHeadTest",
        classnames,
        templates,
        cache_dir,
    )
    tokenizer = open_clip.get_tokenizer(TINY_CLIP_ARCH)
    with torch.no_grad():
        rows = []
        for name in classnames:
            emb = tiny_clip.encode_text(tokenizer([t.format(c=name) for t in templates]))
            rows.append(F.normalize(F.normalize(emb, dim=-1).mean(0), dim=-1))
        expected = torch.stack(rows) * tiny_clip.logit_scale.exp()
    torch.testing.assert_close(head, expected, rtol=1e-5, atol=1e-5)


def test_model_config_points_at_the_shipped_weights(tmp_path, cache_dir):
    cfg = compose_config(["model=tiny_clip", "dataset=digits", *path_overrides(tmp_path, cache_dir)])
    assert cfg.model.arch == TINY_CLIP_ARCH
    assert (PROJECT_ROOT / cfg.model.pretrained).resolve() == WEIGHTS_FILE
