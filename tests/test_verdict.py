"""The verdict rule: a paired test at 95%, its interval, Holm over a page, and its false-positive rate."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldkit.eval.verdict import (
    AGREES,
    DISAGREES,
    LEVEL,
    WITHIN_NOISE,
    decide,
    holm,
    paired,
    sign_flip_allowed,
    sign_flip_p,
    t_quantile,
    t_two_sided_p,
)

finite = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)
seeds = st.lists(finite, min_size=1, max_size=8)


def one(a: list[float], b: list[float], expected: int = 1) -> str:
    """The verdict of a page holding this one comparison."""
    return decide([paired(a, b)], [expected])[0].verdict


@pytest.mark.parametrize(
    ("df", "quantile"),
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (6, 2.447), (9, 2.262), (30, 2.042)],
)
def test_t_quantiles_match_the_tables(df: int, quantile: float) -> None:
    assert t_quantile(df) == pytest.approx(quantile, abs=5e-4)
    assert t_two_sided_p(t_quantile(df), df) == pytest.approx(0.05, abs=1e-9)


def test_t_p_values_in_closed_form() -> None:
    assert t_two_sided_p(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| >= 1) = 1/2
    # df 2: P(|T| >= t) = 1 - t / sqrt(2 + t^2)
    assert t_two_sided_p(math.sqrt(2), 2) == pytest.approx(1 - math.sqrt(2) / 2)
    assert t_two_sided_p(0.0, 5) == pytest.approx(1.0)
    assert t_two_sided_p(math.inf, 3) == 0.0


def test_a_clear_gain_on_every_seed_agrees_and_its_mirror_disagrees() -> None:
    a, b = [0.62, 0.60, 0.64], [0.35, 0.36, 0.34]
    d = paired(a, b)
    assert d.mean == pytest.approx(0.27)
    assert one(a, b, +1) == AGREES
    assert one(a, b, -1) == DISAGREES


def test_the_old_two_standard_errors_rule_no_longer_decides_three_seeds() -> None:
    """d = (0.1, 0.2, 0.3): one sign, mean 2 + 1.46 standard errors (the old rule agreed): t = 3.46 < 4.30."""
    d = paired([0.1, 0.2, 0.3], [0, 0, 0])
    assert abs(d.mean) > 2 * d.stderr
    assert one([0.1, 0.2, 0.3], [0, 0, 0]) == WITHIN_NOISE
    assert one([0.1, 0.2, 0.3, 0.2, 0.25], [0] * 5) == AGREES  # 5 seeds: t = 7.5 > 2.78


def test_the_interval_is_the_t_interval() -> None:
    d = paired([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    lo, hi = d.interval()
    assert d.stderr == pytest.approx(1.0 / math.sqrt(3))
    assert (lo, hi) == pytest.approx((2 - 4.3027 / math.sqrt(3), 2 + 4.3027 / math.sqrt(3)), abs=1e-4)
    assert all(math.isnan(x) for x in paired([1.0], [0.0]).interval())


@settings(deadline=None)  # no wall-clock limit in a unit test
@given(st.lists(finite, min_size=3, max_size=5))
def test_alone_on_a_page_decided_iff_the_interval_excludes_zero(d: list[float]) -> None:
    """Below 6 seeds (the t-test) a comparison alone on its page is decided exactly when its interval
    excludes 0; the sign-flip test (from 6 seeds) and Holm can leave such an interval within noise."""
    p = paired(d, [0.0] * len(d))
    lo, hi = p.interval()
    decided = one(d, [0.0] * len(d)) != WITHIN_NOISE
    if p.stderr > 0 and min(abs(lo), abs(hi)) > 1e-9 * max(abs(lo), abs(hi), 1e-300):
        assert decided == (lo > 0 or hi < 0)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([0.62, 0.60], [0.35, 0.36]),  # two seeds are never enough
        ([0.62, 0.60, 0.64], [0.35, 0.61, 0.34]),  # one seed goes the other way
        ([0.1, 0.1, 0.9], [0.0, 0.0, 0.0]),  # one sign, but a wide interval
    ],
)
def test_undecided_comparisons_are_within_noise(a: list[float], b: list[float]) -> None:
    assert one(a, b, +1) == WITHIN_NOISE
    assert one(a, b, -1) == WITHIN_NOISE


@settings(deadline=None)  # no wall-clock limit in a unit test
@given(seeds, st.sampled_from([1, -1]))
def test_swapping_the_runs_swaps_the_verdict(d: list[float], expected: int) -> None:
    zeros = [0.0] * len(d)
    mirror = {AGREES: DISAGREES, DISAGREES: AGREES, WITHIN_NOISE: WITHIN_NOISE}
    assert one(zeros, d, expected) == mirror[one(d, zeros, expected)]


@settings(deadline=None)  # no wall-clock limit in a unit test
@given(seeds, st.sampled_from([0.125, 0.5, 2.0, 16.0]))
def test_the_verdict_does_not_depend_on_the_scale(d: list[float], scale: float) -> None:
    zeros = [0.0] * len(d)
    assert one([scale * x for x in d], zeros) == one(d, zeros)


def test_a_claimed_tie_is_only_ever_within_noise_or_disagrees() -> None:
    assert one([0.62, 0.60, 0.64], [0.35, 0.36, 0.34], 0) == DISAGREES
    assert one([0.35, 0.36, 0.34], [0.62, 0.60, 0.64], 0) == DISAGREES
    assert one([0.62, 0.60, 0.64], [0.60, 0.62, 0.63], 0) == WITHIN_NOISE


def test_unpaired_values_are_refused() -> None:
    with pytest.raises(ValueError, match="one value per seed"):
        paired([1.0, 2.0, 3.0], [1.0, 2.0])


def test_holm_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 * 0.005, 3 * 0.01, max(.., 2 * 0.03), max(.., 1 * 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_makes_a_page_harder_to_decide_than_a_comparison() -> None:
    d = paired([0.1, 0.2, 0.3, 0.2, 0.25], [0] * 5)  # p = 0.0017 alone
    assert decide([d], [1])[0].verdict == AGREES
    nulls = [paired([0.1, -0.1, 0.05, 0.0, -0.02], [0] * 5)] * 39
    page = decide([d, *nulls], [1] * 40)
    assert page[0].p < LEVEL and page[0].adjusted == pytest.approx(40 * page[0].p)
    assert page[0].verdict == WITHIN_NOISE


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=6))
def test_the_sign_flip_test_is_exact_under_the_null(magnitudes: list[float]) -> None:
    """For any magnitudes, at most a share ``alpha`` of the 2^n equally likely sign patterns (the null of a
    symmetric difference) gives p <= alpha, for every alpha: its false-positive rate is at most the level."""
    ps = [
        sign_flip_p([e * x for e, x in zip(signs, magnitudes, strict=True)])
        for signs in itertools.product((1, -1), repeat=len(magnitudes))
    ]
    for alpha in [*sorted(set(ps)), LEVEL]:
        assert sum(p <= alpha for p in ps) / len(ps) <= alpha + 1e-12


def test_the_sign_flip_test_waits_for_enough_seeds() -> None:
    assert sign_flip_p([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 / 32)  # never below 0.05 at n = 5
    assert sign_flip_p([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == pytest.approx(2 / 64)
    assert not sign_flip_allowed(5, 1) and sign_flip_allowed(6, 1)
    assert not sign_flip_allowed(10, 40) and sign_flip_allowed(11, 40)  # 2 / 2^n < 0.05 / 40
    page = decide([paired([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.0] * 6)], [1])
    assert page[0].test == "sign-flip" and page[0].p == pytest.approx(2 / 64)


@settings(max_examples=6, deadline=None)
@given(
    st.integers(min_value=3, max_value=8), st.floats(min_value=1e-3, max_value=10.0), st.integers(0, 2**31)
)
def test_false_positive_rate_under_a_simulated_null_is_at_most_5_percent(
    n: int, sd: float, seed: int
) -> None:
    """Gaussian paired differences with mean 0: the share of decided comparisons is 0.05 up to simulation
    noise (3 binomial standard errors at 2000 draws is 0.015). The old rule decided 18% at n = 3."""
    rng = random.Random(seed)
    draws = 2000
    decided = sum(
        one([rng.gauss(0.0, sd) for _ in range(n)], [0.0] * n) != WITHIN_NOISE for _ in range(draws)
    )
    assert decided / draws <= LEVEL + 3 * math.sqrt(LEVEL * (1 - LEVEL) / draws)


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 2**31))
def test_holm_keeps_a_page_of_nulls_below_the_level(seed: int) -> None:
    """20 null comparisons of 5 seeds on one page: the chance of deciding any of them is at most 0.05."""
    rng = random.Random(seed)
    pages = 600
    any_decided = 0
    for _ in range(pages):
        diffs = [paired([rng.gauss(0, 1) for _ in range(5)], [0.0] * 5) for _ in range(20)]
        any_decided += any(x.verdict != WITHIN_NOISE for x in decide(diffs, [1] * 20))
    assert any_decided / pages <= LEVEL + 3 * math.sqrt(LEVEL * (1 - LEVEL) / pages)
