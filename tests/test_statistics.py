"""The interval and paired-difference arithmetic of campaigns, against values computed by hand."""

import math

import pytest

from orthoreg_pl.campaign.evidence import aggregate, best_point, interval_text, reference_mode
from orthoreg_pl.campaign.statistics import estimate, paired_difference, t_quantile, verdict


def test_t_interval_by_hand():
    """[0.80, 0.82, 0.84]: mean 0.82, s = 0.02, s/√3 = 0.011547, t(0.975, 2) = 4.302653 → ±0.049683."""
    assert t_quantile(3) == pytest.approx(4.302653, abs=1e-6)
    e = estimate([0.80, 0.82, 0.84])
    assert e.n == 3 and e.mean == pytest.approx(0.82)
    assert e.half_width == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert e.low == pytest.approx(0.82 - 0.049683, abs=1e-6)


def test_one_value_has_no_interval_and_equal_values_a_zero_one():
    one = estimate([0.5])
    assert one.n == 1 and one.half_width is None and one.low is None and not one.excludes_zero()
    flat = estimate([0.7, 0.7, 0.7])
    assert flat.mean == pytest.approx(0.7) and flat.half_width == 0.0
    assert estimate([]) is None and estimate([None, float("nan")]) is None


def test_paired_difference_uses_the_common_seeds():
    """Differences seed by seed: {0: +0.02, 1: +0.01, 2: +0.03} (seed 3 has no reference)."""
    ortho = {0: 0.82, 1: 0.81, 2: 0.84, 3: 0.90}
    plain = {0: 0.80, 1: 0.80, 2: 0.81}
    d = paired_difference(ortho, plain)
    assert d.n == 3 and d.mean == pytest.approx(0.02)
    assert d.half_width == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-6)
    assert d.low == pytest.approx(0.02 - 0.024841, abs=1e-6)
    assert not d.excludes_zero()  # 0.02 ± 0.0248 straddles 0: three seeds cannot tell


def test_verdict_wording():
    better = estimate([0.030, 0.031, 0.029])  # clearly above 0
    assert verdict(better, "maximize") == "better by 3.00 ± 0.25 points (3 seeds)"
    assert verdict(better, "minimize") == "worse by 3.00 ± 0.25 points (3 seeds)"
    noisy = estimate([0.02, -0.01, 0.03])
    assert verdict(noisy, "maximize").startswith("not distinguishable at 3 seeds (+1.33 ± ")
    assert verdict(estimate([0.013]), "maximize") == "+1.30 points at one seed: no interval can be given"
    assert verdict(estimate([0.0, 0.0]), "maximize") == "not distinguishable at 2 seeds (+0.00 ± 0.00 points)"
    assert verdict(None, "maximize") == "no λ = 0 reference at the same seeds"


def test_aggregate_pairs_each_penalised_point_with_its_familys_reference():
    rows = [
        {"mode": "standard_ortho", "lam": 1.0, "seed": s, "objective": v, "negation_target_test": t}
        for s, v, t in ((0, 0.90, 0.30), (1, 0.92, 0.29), (2, 0.91, 0.31))
    ] + [
        {"mode": "standard", "lam": 0.0, "seed": s, "objective": v, "negation_target_test": t}
        for s, v, t in ((0, 0.88, 0.36), (1, 0.90, 0.35), (2, 0.89, 0.37))
    ]
    points = aggregate(rows, ["standard"], "maximize")
    ortho, plain = points
    assert (ortho["mode"], ortho["lam"], ortho["seeds"], ortho["reference"]) == (
        "standard_ortho",
        1.0,
        [0, 1, 2],
        "standard",
    )
    assert ortho["differences"]["objective"]["mean"] == pytest.approx(0.02)
    assert ortho["differences"]["objective"]["half_width"] == 0.0  # the same +0.02 at every seed
    assert ortho["verdicts"]["objective"] == "better by 2.00 ± 0.00 points (3 seeds)"
    assert (
        ortho["verdicts"]["negation_target_test"] == "better by 6.00 ± 0.00 points (3 seeds)"
    )  # lower is better
    assert plain["reference"] is None and plain["verdicts"] == {}
    assert best_point(points, "maximize") is ortho and best_point(points, "minimize") is plain
    assert interval_text(ortho["metrics"]["objective"]).startswith("91.00 ± ")
    assert (
        reference_mode("attn_ortho", ["standard"]) is None
        and reference_mode("standard", ["standard"]) is None
    )
