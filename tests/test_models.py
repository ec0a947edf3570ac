"""Model building (architectures, pretrained weights) and the cached zero-shot heads (docs/method.md §4)."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from orthoreg_pl import OrthoRegError
from orthoreg_pl.models import (
    TINY_ARCH,
    build_classifier,
    check_architecture,
    create_clip,
    load_or_build_head,
    pretrained_identity,
)

CLASSNAMES = ["circle", "square", "triangle", "cross"]
TEMPLATES = ["a drawing of a {c}.", "a photo of a {c}.", "a {c} shape."]


def visual_state(model) -> dict[str, torch.Tensor]:
    return dict(model.visual.state_dict())


def test_tiny_architecture_builds_and_runs():
    """The tiny ViT used by the quickstart and the tests: 32-px input, 32-d embedding, float32."""
    clip = create_clip(TINY_ARCH, None)
    assert clip.visual.image_size == (32, 32)
    out = clip.visual(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 32) and out.dtype == torch.float32


def test_random_init_is_seeded():
    """Same init_seed → same θ0 (runs can be merged); another seed → other weights."""
    a, b, c = (create_clip(TINY_ARCH, None, init_seed=s) for s in (0, 0, 1))
    sa, sb, sc = visual_state(a), visual_state(b), visual_state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_unknown_architecture_raises():
    with pytest.raises(OrthoRegError, match="ViT-X-99"):
        check_architecture("ViT-X-99")
    with pytest.raises(OrthoRegError, match="ViT-X-99"):
        create_clip("ViT-X-99", None)


@pytest.mark.parametrize("pretrained", ["/nonexistent/weights.safetensors", "no_such_tag"])
def test_unknown_pretrained_raises(pretrained):
    """A wrong path or tag is reported before anything tries to download."""
    with pytest.raises(OrthoRegError) as err:
        create_clip(TINY_ARCH, pretrained)
    assert pretrained in str(err.value)


def test_local_weights_file(tmp_path):
    """model.pretrained=<file> loads exactly those weights (users' own checkpoints, offline)."""
    source = create_clip(TINY_ARCH, None, init_seed=1)
    path = tmp_path / "tiny_seed1.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = create_clip(TINY_ARCH, str(path))
    other = visual_state(create_clip(TINY_ARCH, None, init_seed=0))
    want, got = visual_state(source), visual_state(loaded)
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not all(torch.equal(got[k], other[k]) for k in other)
    identity = pretrained_identity(str(path), 0)
    assert identity.startswith(path.name + "-sha256:") and len(identity) == len(path.name) + 8 + 16


def test_incompatible_weights_file_raises(tmp_path):
    """A weights file of another architecture is a clear OrthoRegError naming the file."""
    path = tmp_path / "wrong.safetensors"
    save_file({"visual.proj": torch.zeros(3, 3)}, str(path))
    with pytest.raises(OrthoRegError, match="wrong.safetensors"):
        create_clip(TINY_ARCH, str(path))


def test_weight_files_with_same_name_get_their_own_heads(tmp_path):
    """Two different checkpoints both called model.safetensors must not share a cached zero-shot head."""
    paths = []
    for seed in (1, 2):
        path = tmp_path / f"ckpt{seed}" / "model.safetensors"
        path.parent.mkdir()
        clip = create_clip(TINY_ARCH, None, init_seed=seed)
        save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
        paths.append(str(path))
    cache = tmp_path / "cache"
    a = build_classifier(TINY_ARCH, paths[0], "Shapes", CLASSNAMES, TEMPLATES, cache)
    b = build_classifier(TINY_ARCH, paths[1], "Shapes", CLASSNAMES, TEMPLATES, cache)
    fresh = build_classifier(TINY_ARCH, paths[1], "Shapes", CLASSNAMES, TEMPLATES, tmp_path / "other_cache")
    assert torch.equal(b.head.weight, fresh.head.weight)
    assert not torch.equal(a.head.weight, b.head.weight)


def test_pretrained_identity():
    assert pretrained_identity(None, 3) == "random-init-seed3"
    assert pretrained_identity("openai", 0) == "openai"


def direct_head(clip, classnames, templates) -> torch.Tensor:
    """docs/method.md §4 written out: per class, mean of normalised prompt embeddings, normalised, × exp(logit_scale)."""
    tokenizer = open_clip.get_tokenizer(TINY_ARCH)
    rows = []
    with torch.no_grad():
        for name in classnames:
            emb = clip.encode_text(tokenizer([t.replace("{c}", name) for t in templates]))
            mean = (emb / emb.norm(dim=-1, keepdim=True)).mean(dim=0)
            rows.append(mean / mean.norm())
        return torch.stack(rows) * clip.logit_scale.exp()


def test_head_is_built_cached_and_reloaded(tmp_path):
    """First call builds with the text tower and writes the cache; the second needs no CLIP at all."""
    clip = create_clip(TINY_ARCH, None)
    args = (TINY_ARCH, "random-init-seed0", "Shapes", CLASSNAMES, TEMPLATES, tmp_path)
    head = load_or_build_head(clip, *args)
    files = list((tmp_path / "heads").glob("*.safetensors"))
    assert len(files) == 1
    assert head.shape == (len(CLASSNAMES), 32) and head.dtype == torch.float32
    again = load_or_build_head(None, *args)
    assert torch.equal(again, head)
    torch.testing.assert_close(head, direct_head(clip, CLASSNAMES, TEMPLATES), rtol=1e-5, atol=1e-6)
    norms = head.norm(dim=-1)
    torch.testing.assert_close(norms, clip.logit_scale.exp().detach().expand_as(norms), rtol=1e-5, atol=0.0)


def test_head_cache_key_depends_on_prompts(tmp_path):
    """Editing a prompt must not reuse a stale head."""
    clip = create_clip(TINY_ARCH, None)
    a = load_or_build_head(clip, TINY_ARCH, "random-init-seed0", "Shapes", CLASSNAMES, TEMPLATES, tmp_path)
    b = load_or_build_head(
        clip, TINY_ARCH, "random-init-seed0", "Shapes", CLASSNAMES, TEMPLATES[:1], tmp_path
    )
    assert len(list((tmp_path / "heads").glob("*.safetensors"))) == 2
    assert not torch.equal(a, b)
    with pytest.raises(OrthoRegError):  # nothing cached for these prompts and no text tower to build
        load_or_build_head(None, TINY_ARCH, "random-init-seed0", "Shapes", CLASSNAMES, ["x {c}"], tmp_path)


def test_corrupt_head_cache_raises(tmp_path):
    clip = create_clip(TINY_ARCH, None)
    args = (TINY_ARCH, "random-init-seed0", "Shapes", CLASSNAMES, TEMPLATES, tmp_path)
    load_or_build_head(clip, *args)
    (path,) = (tmp_path / "heads").glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(OrthoRegError) as err:
        load_or_build_head(None, *args)
    assert str(path) in str(err.value)


def test_classifier_is_image_tower_plus_frozen_head(tmp_path):
    """Only image-tower parameters remain (task vectors are keyed by them); the head is not a parameter."""
    model = build_classifier(TINY_ARCH, None, "Shapes", CLASSNAMES, TEMPLATES, tmp_path)
    names = [n for n, _ in model.named_parameters()]
    assert names and all(n.startswith("visual.") for n in names)
    assert "head.weight" not in model.state_dict()  # the frozen head is rebuilt from the cache, never trained
    images = torch.randn(3, 3, 32, 32)
    logits = model(images)
    expected = F.normalize(model.visual(images), dim=-1) @ model.head.weight.T
    torch.testing.assert_close(logits, expected)
    assert logits.shape == (3, len(CLASSNAMES))
