"""Query-index sampling: ``i = min(floor(u N), N - 1)`` with ``u ~ Beta`` (low 5,2 / mid 5,5 / high 2,5),
plus uniform, stratified and all. Distributions are checked with chi-square tests at fixed seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.polynomial import Polynomial

from fieldkit.distill.queries import BETA, index_probabilities, sample_indices


def beta_cdf(a: int, b: int):
    """The exact CDF of Beta(a, b) for integer a, b: the integral of x^(a-1) (1-x)^(b-1), normalised."""
    pdf = Polynomial([0] * (a - 1) + [1]) * Polynomial([1, -1]) ** (b - 1)
    cdf = pdf.integ()
    total = cdf(1.0)
    return lambda x: cdf(x) / total


def exact_index_probs(steps: int, a: int, b: int) -> np.ndarray:
    cdf = beta_cdf(a, b)
    edges = np.arange(steps + 1) / steps
    return np.diff(cdf(edges))


def pool(expected: np.ndarray, *observed: np.ndarray, min_expected: float = 5.0):
    """Merge the bins whose expected count is below ``min_expected`` into one bin (chi-square validity);
    if that bin is still too small it joins the smallest of the others."""
    small = expected < min_expected
    if not small.any():
        return (expected, *observed)
    kept = [arr[~small] for arr in (expected, *observed)]
    rest = [arr[small].sum() for arr in (expected, *observed)]
    if rest[0] >= min_expected:
        return tuple(np.append(k, r) for k, r in zip(kept, rest, strict=True))
    target = int(np.argmin(kept[0]))
    for k, r in zip(kept, rest, strict=True):
        k[target] += r
    return tuple(kept)


def chi2_sf(stat: float, df: int) -> float:
    """P(Chi2(df) >= stat) = Q(df / 2, stat / 2), the regularised upper incomplete gamma function."""
    return float(
        torch.special.gammaincc(
            torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)
        )
    )


def gof_pvalue(indices: torch.Tensor, probs: np.ndarray) -> float:
    """Chi-square goodness of fit of sampled indices against bin probabilities."""
    counts = np.bincount(indices.flatten().numpy(), minlength=len(probs)).astype(np.float64)
    assert len(counts) == len(probs), "an index fell outside [0, N - 1]"
    expected, observed = pool(probs * counts.sum(), counts)
    stat = float(((observed - expected) ** 2 / expected).sum())
    return chi2_sf(stat, len(expected) - 1)


def homogeneity_pvalue(x: torch.Tensor, y: torch.Tensor, bins: int) -> float:
    """Two-sample chi-square test that x and y (index samples) come from one distribution."""
    cx = np.bincount(x.flatten().numpy(), minlength=bins).astype(np.float64)
    cy = np.bincount(y.flatten().numpy(), minlength=bins).astype(np.float64)
    nx, ny = cx.sum(), cy.sum()
    pooled = (cx + cy) / (nx + ny)
    expected_x, cx, cy, pooled = pool(pooled * nx, cx, cy, pooled)
    expected_y = pooled * ny
    stat = float(((cx - expected_x) ** 2 / expected_x).sum() + ((cy - expected_y) ** 2 / expected_y).sum())
    return chi2_sf(stat, len(expected_x) - 1)


def monte_carlo_indices(steps: int, n: int, a: float, b: float, seed: int) -> torch.Tensor:
    """The release code's formula, independently: ``min(floor(u N), N - 1)`` with ``u ~ Beta(a, b)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u = torch.distributions.Beta(torch.tensor(a), torch.tensor(b)).sample((n,))
    return torch.clamp((u.double() * steps).floor().long(), max=steps - 1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the bin probabilities ------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", ["low", "mid", "high"])
@pytest.mark.parametrize("steps", [1, 4, 16, 28])
def test_index_probabilities_equal_the_exact_beta_cdf(bias, steps):
    a, b = BETA[bias]
    probs = index_probabilities(steps, a, b).numpy()
    np.testing.assert_allclose(probs, exact_index_probs(steps, int(a), int(b)), atol=1e-7)
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)


def test_beta_names_and_mirror_symmetry():
    assert BETA == {"low": (5.0, 2.0), "mid": (5.0, 5.0), "high": (2.0, 5.0)}
    low, mid, high = (index_probabilities(16, *BETA[b]) for b in ("low", "mid", "high"))
    torch.testing.assert_close(high, low.flip(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(mid, mid.flip(0), atol=1e-12, rtol=0)
    # "low" means low noise: late in the rollout. Median index 11 of 0..15, terminal index ~5%.
    assert int(torch.searchsorted(low.cumsum(0), torch.tensor(0.5, dtype=torch.float64))) == 11
    assert float(low[-1]) == pytest.approx(1 - (6 * 0.9375**5 - 5 * 0.9375**6), abs=1e-9)


# -- sampling: low bias against both references -----------------------------------------------------------


def test_low_bias_indices_fit_index_probabilities_and_a_beta52_monte_carlo():
    steps = 16
    idx = sample_indices(steps, 50_000, 4, "low", gen(0))
    assert idx.shape == (50_000, 4) and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) <= steps - 1
    assert gof_pvalue(idx, index_probabilities(steps, 5.0, 2.0).numpy()) > 1e-3
    assert gof_pvalue(idx, exact_index_probs(steps, 5, 2)) > 1e-3
    mc = monte_carlo_indices(steps, 200_000, 5.0, 2.0, seed=1)
    assert homogeneity_pvalue(idx, mc, steps) > 1e-3
    # The same tests have the power to reject a neighbouring distribution.
    mid = sample_indices(steps, 50_000, 4, "mid", gen(2))
    assert gof_pvalue(mid, index_probabilities(steps, 5.0, 2.0).numpy()) < 1e-12
    assert homogeneity_pvalue(mid, mc, steps) < 1e-12
    wrong_a = monte_carlo_indices(steps, 200_000, 4.0, 2.0, seed=3)
    assert homogeneity_pvalue(idx, wrong_a, steps) < 1e-12


@pytest.mark.parametrize(("bias", "ab"), [("mid", (5, 5)), ("high", (2, 5))])
def test_mid_and_high_bias_fit_their_beta(bias, ab):
    steps = 12
    idx = sample_indices(steps, 20_000, 2, bias, gen(4))
    assert int(idx.min()) >= 0 and int(idx.max()) <= steps - 1
    assert gof_pvalue(idx, exact_index_probs(steps, *ab)) > 1e-3
    assert homogeneity_pvalue(idx, monte_carlo_indices(steps, 40_000, *map(float, ab), seed=5), steps) > 1e-3


def test_bias_orders_the_mean_index():
    means = {b: float(sample_indices(16, 4000, 1, b, gen(6)).double().mean()) for b in ("low", "mid", "high")}
    assert means["high"] < means["mid"] < means["low"]
    # E[u] = a / (a + b): 5/7, 1/2, 2/7 of N, minus ~1/2 for the floor.
    for bias, (a, b) in BETA.items():
        assert means[bias] == pytest.approx(16 * a / (a + b) - 0.5, abs=0.15)


def test_uniform_is_uniform():
    idx = sample_indices(10, 10_000, 3, "uniform", gen(7))
    assert idx.shape == (10_000, 3)
    assert int(idx.min()) == 0 and int(idx.max()) == 9
    assert gof_pvalue(idx, np.full(10, 0.1)) > 1e-3


@pytest.mark.parametrize(("steps", "k"), [(16, 4), (16, 3), (7, 7), (5, 1)])
def test_stratified_puts_one_query_in_each_stratum(steps, k):
    idx = sample_indices(steps, 2000, k, "stratified", gen(8))
    assert idx.shape == (2000, k)
    for j in range(k):
        lo, hi = (j * steps) // k, -(-((j + 1) * steps) // k) - 1  # floor(j N / k), ceil((j + 1) N / k) - 1
        col = idx[:, j]
        assert int(col.min()) == lo and int(col.max()) == hi, (j, lo, hi, col.unique())
    if steps % k == 0 and steps > k:  # equal strata: each column is uniform over its own stratum
        width = steps // k
        for j in range(k):
            assert gof_pvalue(idx[:, j] - j * width, np.full(width, 1 / width)) > 1e-3
    if k == steps:  # one index per stratum: every row is 0..N-1
        assert torch.equal(idx, torch.arange(steps).expand(2000, steps))


def test_all_returns_every_index_and_ignores_k():
    idx = sample_indices(6, 3, 2, "all", gen(9))
    assert torch.equal(idx, torch.arange(6).expand(3, 6))


@pytest.mark.parametrize("bias", ["low", "mid", "high", "uniform", "stratified"])
def test_same_generator_state_same_indices(bias):
    assert torch.equal(sample_indices(16, 8, 2, bias, gen(10)), sample_indices(16, 8, 2, bias, gen(10)))
    assert not torch.equal(sample_indices(16, 64, 2, bias, gen(10)), sample_indices(16, 64, 2, bias, gen(11)))


@pytest.mark.parametrize(("steps", "batch", "k"), [(0, 1, 1), (4, 0, 1), (4, 1, 0)])
def test_bad_sizes_raise(steps, batch, k):
    with pytest.raises(ValueError, match="steps, batch and k"):
        sample_indices(steps, batch, k, "low", gen())
