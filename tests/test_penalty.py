"""The OrthoReg penalty (docs/method.md §2) as a pure function: values, gradients, reference numbers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from orthoreg_pl import OrthoRegError
from orthoreg_pl.penalties.ortho import (
    gram_size,
    ortho_penalty,
    ortho_penalty_of,
    ortho_penalty_per_matrix,
    penalty_at_zero,
    shape_groups,
)

OPTIONS = list(itertools.product(("fro", "fro_squared"), ("min_side", "columns")))
SHAPES = [(7, 3), (3, 7), (5, 5), (1, 4), (6, 1)]  # tall, wide, square, a row and a column


def direct_penalty(deltas, norm, gram):
    """The formula of docs/method.md §2 written out, independently of the package."""
    total = 0.0
    for d in deltas:
        rows, cols = d.shape
        g = d @ d.T if (gram == "min_side" and rows < cols) else d.T @ d
        term = torch.linalg.matrix_norm(g - torch.eye(g.shape[0], dtype=d.dtype), ord="fro")
        total = total + (term**2 if norm == "fro_squared" else term)
    return total


def expected_k(shape, gram):
    rows, cols = shape
    return min(rows, cols) if gram == "min_side" else cols


@pytest.mark.parametrize("norm,gram", OPTIONS)
def test_value_and_gradient_at_zero(norm, gram):
    """At ΔW=0 each term is √k (or k) and the gradient is exactly 0: the first step equals the baseline's."""
    deltas = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    ks = [expected_k(s, gram) for s in SHAPES]
    expected = sum(ks) if norm == "fro_squared" else sum(math.sqrt(k) for k in ks)
    assert [gram_size(s, gram) for s in SHAPES] == ks
    value = ortho_penalty(deltas, norm=norm, gram=gram)
    assert value.item() == pytest.approx(expected, rel=1e-12)
    assert penalty_at_zero(SHAPES, norm=norm, gram=gram) == pytest.approx(expected, rel=1e-12)
    value.backward()
    for d in deltas:
        assert d.grad is not None and torch.count_nonzero(d.grad) == 0


def test_orthonormal_columns_give_zero():
    """ΔW with orthonormal columns is exactly what the paper's form (‖ΔWᵀΔW − I‖²) rewards with 0."""
    q, _ = torch.linalg.qr(torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    assert ortho_penalty([q], norm="fro_squared", gram="columns").item() == pytest.approx(0.0, abs=1e-10)
    assert ortho_penalty([q], norm="fro", gram="min_side").item() == pytest.approx(0.0, abs=1e-10)
    # Wide Qᵀ: the row Gram (min_side) is I_5, the column Gram an 8×8 rank-5 projector P: ‖P − I‖² = 3.
    assert ortho_penalty([q.T], norm="fro_squared", gram="min_side").item() == pytest.approx(0.0, abs=1e-10)
    assert ortho_penalty([q.T], norm="fro_squared", gram="columns").item() == pytest.approx(3.0, abs=1e-10)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("norm,gram", OPTIONS)
def test_matches_direct_formula_value_and_gradient(norm, gram, dtype, rtol):
    """The custom autograd function must equal autograd through the direct formula, value and gradient."""
    g = torch.Generator().manual_seed(1)
    base = [0.3 * torch.randn(s, dtype=dtype, generator=g) for s in SHAPES + [(16, 40), (40, 16)]]
    fast_in = [b.clone().requires_grad_(True) for b in base]
    ref_in = [b.clone().requires_grad_(True) for b in base]
    fast = ortho_penalty(fast_in, norm=norm, gram=gram)
    ref = direct_penalty(ref_in, norm, gram)
    assert fast.dtype == dtype
    torch.testing.assert_close(fast, ref, rtol=rtol, atol=0.0)
    fast.backward()
    ref.backward()
    for a, b in zip(fast_in, ref_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=rtol * 1e-2)


def test_gradient_scales_with_upstream_gradient():
    """λ·penalty must give λ times the gradient (backward honours grad_output)."""
    base = 0.5 * torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for norm in ("fro", "fro_squared"):
        a, b = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
        ortho_penalty([a], norm=norm).backward()
        (7.5 * ortho_penalty([b], norm=norm)).backward()
        torch.testing.assert_close(b.grad, 7.5 * a.grad, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("norm,gram", OPTIONS)
def test_gradcheck(norm, gram):
    """Finite differences agree with the hand-written backward for every option."""
    g = torch.Generator().manual_seed(3)
    inputs = tuple(
        torch.randn(s, dtype=torch.float64, generator=g, requires_grad=True) for s in [(4, 3), (3, 5), (4, 4)]
    )
    assert torch.autograd.gradcheck(lambda *d: ortho_penalty(list(d), norm=norm, gram=gram), inputs)


def vit_shapes(layers: int, width: int, mlp: int, tokens: int, embed: int) -> list[tuple[int, int]]:
    block = [(3 * width, width), (width, width), (mlp, width), (width, mlp)]
    return block * layers + [(tokens, width), (width, embed)]


@pytest.mark.parametrize(
    "name,shapes,expected",
    [
        ("ViT-B-32", vit_shapes(12, 768, 3072, 50, 512), 1359.914),
        ("ViT-B-16", vit_shapes(12, 768, 3072, 197, 512), 1366.878),
        ("ViT-L-14", vit_shapes(24, 1024, 4096, 257, 768), 3115.744),
    ],
)
def test_reference_values_at_init(name, shapes, expected):
    """The unsquared min-side penalty at ΔW=0 reproduces the reference numbers of docs/method.md §2."""
    assert penalty_at_zero(shapes, norm="fro", gram="min_side") == pytest.approx(expected, abs=1e-3)


def test_reference_value_from_real_vit_b32():
    """The 2-D trainable parameters of open_clip's ViT-B-32 image tower are the 50 matrices of §2."""
    from orthoreg_pl.models import create_clip

    visual = create_clip("ViT-B-32", None).visual
    shapes = [tuple(p.shape) for p in visual.parameters() if p.requires_grad and p.ndim == 2]
    assert len(shapes) == 12 * 4 + 2
    assert penalty_at_zero(shapes) == pytest.approx(1359.914, abs=1e-3)


@pytest.mark.parametrize("kwargs,bad", [({"norm": "l1"}, "l1"), ({"gram": "rows"}, "rows")])
def test_bad_options_raise(kwargs, bad):
    """A typo in ortho.norm / ortho.gram must fail loudly, naming the value."""
    with pytest.raises(OrthoRegError, match=bad):
        ortho_penalty([torch.zeros(3, 2)], **kwargs)


@pytest.mark.parametrize("kwargs", [{"norm": "l1"}, {"gram": "rows"}])
def test_penalty_at_zero_rejects_bad_options(kwargs):
    """penalty_at_zero silently treats unknown options as fro / columns instead of raising."""
    with pytest.raises(OrthoRegError):
        penalty_at_zero([(3, 2)], **kwargs)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), (1, 3, 2, 2)])
def test_non_matrix_raises(shape):
    """Biases and conv kernels must never reach the penalty."""
    with pytest.raises(OrthoRegError, match="2-D"):
        ortho_penalty([torch.zeros(4, 4), torch.zeros(shape)])


def test_empty_list_raises():
    with pytest.raises(OrthoRegError):
        ortho_penalty([])


# ---- shape groups and the weights form (ΔW formed inside, not kept) --------------------------------

GROUPED_SHAPES = [(6, 4), (4, 6), (6, 4), (5, 5), (4, 6), (6, 4), (5, 5), (3, 8)]  # repeats, as in a ViT


def test_shape_groups_keep_first_appearance_order():
    assert shape_groups(GROUPED_SHAPES) == [[0, 2, 5], [1, 4], [3, 6], [7]]


@pytest.mark.parametrize("norm,gram", OPTIONS)
def test_shape_groups_equal_the_per_matrix_path(norm, gram):
    """Batched by shape (bmm) equals one matrix at a time, value and gradients, in float64."""
    g = torch.Generator().manual_seed(5)
    base = [0.4 * torch.randn(s, dtype=torch.float64, generator=g) for s in GROUPED_SHAPES]
    grouped_in = [b.clone().requires_grad_(True) for b in base]
    single_in = [b.clone().requires_grad_(True) for b in base]
    grouped = ortho_penalty(grouped_in, norm=norm, gram=gram)
    single = ortho_penalty_per_matrix(single_in, norm=norm, gram=gram)
    torch.testing.assert_close(grouped, single, rtol=1e-13, atol=0.0)
    torch.testing.assert_close(grouped, direct_penalty(base, norm, gram), rtol=1e-12, atol=0.0)
    (3.0 * grouped).backward()
    (3.0 * single).backward()
    for a, b in zip(grouped_in, single_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("norm,gram", OPTIONS)
def test_weights_form_equals_the_deltas_form(norm, gram):
    """ortho_penalty_of(W, W0) = ortho_penalty(W − W0): value, and the gradient reaching W."""
    g = torch.Generator().manual_seed(6)
    bases = [torch.randn(s, dtype=torch.float64, generator=g) for s in GROUPED_SHAPES]
    start = [b + 0.3 * torch.randn(b.shape, dtype=b.dtype, generator=g) for b in bases]
    weights_a = [w.clone().requires_grad_(True) for w in start]
    weights_b = [w.clone().requires_grad_(True) for w in start]
    of = ortho_penalty_of(weights_a, bases, norm=norm, gram=gram)
    plain = ortho_penalty([w - b for w, b in zip(weights_b, bases)], norm=norm, gram=gram)
    torch.testing.assert_close(of, plain, rtol=1e-13, atol=0.0)
    of.backward()
    plain.backward()
    for a, b in zip(weights_a, weights_b):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-15)
    inputs = tuple(w.detach().clone().requires_grad_(True) for w in start[:3])
    assert torch.autograd.gradcheck(
        lambda *w: ortho_penalty_of(list(w), bases[:3], norm=norm, gram=gram), inputs
    )


def test_weights_form_keeps_no_delta_for_the_backward():
    """What the weights form saves for its backward: the weights and bases themselves (no copies), the
    norms and the Gram residuals; never a ΔW-sized tensor of its own (the deltas form keeps one)."""
    g = torch.Generator().manual_seed(7)
    shapes = [(12, 4)] * 3  # tall: Gram 4×4, so a saved 12×4 tensor can only be W, W0 or ΔW
    bases = [torch.randn(s, generator=g) for s in shapes]
    weights = [(b + 0.1).requires_grad_(True) for b in bases]

    def saved_by(fn) -> list[torch.Tensor]:
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fn()
        return saved

    theirs = {t.data_ptr() for t in [*weights, *bases]}
    kept = saved_by(lambda: ortho_penalty_of(weights, bases))
    assert all(t.data_ptr() in theirs for t in kept if tuple(t.shape) == (12, 4))
    assert sum(tuple(t.shape) == (12, 4) for t in kept) == 6  # the 3 weights and 3 bases, by reference
    deltas_kept = saved_by(lambda: ortho_penalty([w - b for w, b in zip(weights, bases)]))
    assert sum(tuple(t.shape) == (12, 4) and t.data_ptr() not in theirs for t in deltas_kept) == 3
