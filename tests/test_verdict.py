"""The verdict rule: decided with >= 3 seeds, one sign on every seed, a mean above 2 standard errors."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldkit.eval.verdict import AGREES, DISAGREES, WITHIN_NOISE, paired, verdict

finite = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)
seeds = st.lists(finite, min_size=1, max_size=8)


def test_a_clear_gain_on_every_seed_agrees_and_its_mirror_disagrees() -> None:
    d = paired([0.62, 0.60, 0.64], [0.35, 0.36, 0.34])
    assert d.mean == pytest.approx(0.27)
    assert verdict(d, +1) == AGREES
    assert verdict(d, -1) == DISAGREES


def test_the_standard_error_is_stdev_over_root_n() -> None:
    d = paired([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert d.stderr == pytest.approx(1.0 / math.sqrt(3))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([0.62, 0.60], [0.35, 0.36]),  # two seeds are never enough
        ([0.62, 0.60, 0.64], [0.35, 0.61, 0.34]),  # one seed goes the other way
        ([0.62, 0.60, 0.64], [0.35, 0.60, 0.34]),  # one seed is a tie
        ([0.1, 0.1, 0.9], [0.0, 0.0, 0.0]),  # one sign, but the mean is within 2 standard errors
    ],
)
def test_undecided_comparisons_are_within_noise(a: list[float], b: list[float]) -> None:
    assert verdict(paired(a, b), +1) == WITHIN_NOISE
    assert verdict(paired(a, b), -1) == WITHIN_NOISE


def test_one_sign_with_a_mean_just_above_two_standard_errors_is_decided() -> None:
    # d = (1, 1, x): mean (2 + x) / 3, stdev (1 - x) / sqrt(3); the rule holds iff (2 + x) > 2 (1 - x), x > 0.
    assert verdict(paired([1.0, 1.0, 0.01], [0, 0, 0]), +1) == AGREES
    assert verdict(paired([1.0, 1.0, 1e-9], [0, 0, 0]), +1) == AGREES  # still one sign, mean > 2 se
    assert verdict(paired([1.0, 1.0, 0.0], [0, 0, 0]), +1) == WITHIN_NOISE


@given(seeds, st.sampled_from([1, -1]))
def test_swapping_the_runs_swaps_the_verdict(d: list[float], expected: int) -> None:
    zeros = [0.0] * len(d)
    forward, backward = verdict(paired(d, zeros), expected), verdict(paired(zeros, d), expected)
    mirror = {AGREES: DISAGREES, DISAGREES: AGREES, WITHIN_NOISE: WITHIN_NOISE}
    assert backward == mirror[forward]


@given(seeds, st.sampled_from([0.125, 0.5, 2.0, 16.0]))
def test_the_verdict_does_not_depend_on_the_scale(d: list[float], scale: float) -> None:
    zeros = [0.0] * len(d)
    assert verdict(paired([scale * x for x in d], zeros), +1) == verdict(paired(d, zeros), +1)


@given(seeds)
def test_decided_only_with_three_seeds_of_one_sign(d: list[float]) -> None:
    if verdict(paired(d, [0.0] * len(d)), +1) != WITHIN_NOISE:
        assert len(d) >= 3
        assert all(x > 0 for x in d) or all(x < 0 for x in d)


def test_a_claimed_tie_is_only_ever_within_noise_or_disagrees() -> None:
    assert verdict(paired([0.62, 0.60, 0.64], [0.35, 0.36, 0.34]), 0) == DISAGREES
    assert verdict(paired([0.35, 0.36, 0.34], [0.62, 0.60, 0.64]), 0) == DISAGREES
    assert verdict(paired([0.62, 0.60, 0.64], [0.60, 0.62, 0.63]), 0) == WITHIN_NOISE


def test_unpaired_values_are_refused() -> None:
    with pytest.raises(ValueError, match="one value per seed"):
        paired([1.0, 2.0, 3.0], [1.0, 2.0])
