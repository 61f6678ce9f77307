"""Closed-form Gaussian and Gaussian-mixture velocity fields."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldkit.analytic import GaussianMixtureField, gaussian_velocity
from fieldkit.cond import Cond
from fieldkit.flow import euler_sample, interpolate, sigma_schedule, target_velocity
from fieldkit.ops import Guidance

FAST = settings(max_examples=25, deadline=None)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- single Gaussian ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.1, 0.4, 0.75, 0.95])
def test_gaussian_velocity_is_the_conditional_expectation(sigma):
    # E[eps - x0 | x_sigma] is linear in x_sigma for Gaussian data, so a least-squares fit of the sampled
    # targets (eps - x0) on x_sigma recovers it: compare the fitted line with the closed form.
    m, s, n = 0.7, 0.5, 400_000
    g = gen(1)
    x0 = m + s * torch.randn(n, 1, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 1, generator=g, dtype=torch.float64)
    sig = torch.full((n,), sigma, dtype=torch.float64)
    xs = interpolate(x0, eps, sig)
    v = target_velocity(x0, eps)
    design = torch.cat([xs, torch.ones_like(xs)], dim=1)
    slope, intercept = torch.linalg.lstsq(design, v).solution.flatten().tolist()
    probe = torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64)
    exact = gaussian_velocity(probe, torch.full((3,), sigma, dtype=torch.float64), torch.tensor([m]), s)
    assert torch.allclose(slope * probe + intercept, exact, atol=0.01)


def test_gaussian_velocity_endpoints():
    x = torch.randn(5, 3, generator=gen(), dtype=torch.float64)
    m = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    ones, zeros = torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    # at sigma = 1 x is pure noise: E[eps - x0 | x] = x - m; at sigma = 0 x is data: E[eps - x0 | x] = -x
    assert torch.allclose(gaussian_velocity(x, ones, m, 0.3), x - m, atol=1e-14)
    assert torch.allclose(gaussian_velocity(x, zeros, m, 0.3), -x, atol=1e-14)


def test_gaussian_ode_pushes_noise_to_the_data_gaussian():
    # the probability-flow ODE of N(m, s^2) carries N(0, 1) to N(m, s^2): check the moments, and (being the
    # 1-D monotone transport map for a Gaussian) that each sample lands at m + s * noise.
    m, s, n = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.3, 8_000
    noise = torch.randn(n, 2, generator=gen(2), dtype=torch.float64)
    field = lambda x, sigma, cond: gaussian_velocity(x, sigma, m, s)  # noqa: E731
    out = euler_sample(field, noise, Cond(), sigma_schedule(400, dtype=torch.float64)).final
    se = s / math.sqrt(n)
    assert torch.allclose(out.mean(0), m, atol=4 * se + 2e-3)
    assert torch.allclose(out.std(0), torch.full((2,), s, dtype=torch.float64), atol=0.015)
    assert torch.allclose(out, m + s * noise, atol=0.01)


# --- mixture ------------------------------------------------------------------------------------------


def test_mixture_construction():
    a, b = (
        GaussianMixtureField.random(3, (2, 4, 4), seed=5),
        GaussianMixtureField.random(3, (2, 4, 4), seed=5),
    )
    assert a.means.shape == (3, 2, 4, 4) and torch.equal(a.means, b.means)
    with pytest.raises(ValueError):
        GaussianMixtureField(torch.zeros(3))
    cond = Cond(label=torch.tensor([2, 0]), source=torch.zeros(2, 1))
    u = a.uncond(cond)
    assert torch.equal(u["label"], torch.tensor([-1, -1])) and torch.equal(u["source"], cond["source"])


@FAST
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 6))
def test_mixture_with_label_is_that_component(seed, batch):
    gmm = GaussianMixtureField.random(4, (2, 3, 3), std=0.4, seed=seed).double()
    g = gen(seed)
    x = torch.randn(batch, 2, 3, 3, generator=g, dtype=torch.float64)
    sigma = torch.rand(batch, generator=g, dtype=torch.float64)
    label = torch.randint(0, 4, (batch,), generator=g)
    out = gmm(x, sigma, Cond(label=label))
    for b in range(batch):
        exact = gaussian_velocity(x[b : b + 1], sigma[b : b + 1], gmm.means[label[b]], 0.4)
        assert torch.allclose(out[b : b + 1], exact, atol=1e-12)


def test_mixture_null_label_at_pure_noise_is_the_average():
    # at sigma = 1 every component has the same likelihood, so the mixture velocity is x - mean(means)
    gmm = GaussianMixtureField.random(3, (4,), std=0.2, seed=3).double()
    x = torch.randn(5, 4, generator=gen(), dtype=torch.float64)
    out = gmm(x, torch.ones(5, dtype=torch.float64), Cond(label=torch.full((5,), -1)))
    assert torch.allclose(out, x - gmm.means.mean(0), atol=1e-12)


def test_mixture_null_label_single_component_is_that_gaussian_and_label_is_optional():
    gmm = GaussianMixtureField(torch.tensor([[0.5, -1.0]], dtype=torch.float64), std=0.6)
    x = torch.randn(4, 2, generator=gen(), dtype=torch.float64)
    sigma = torch.rand(4, generator=gen(1), dtype=torch.float64)
    exact = gaussian_velocity(x, sigma, gmm.means[0], 0.6)
    assert torch.allclose(gmm(x, sigma, Cond(label=torch.full((4,), -1))), exact, atol=1e-12)
    assert torch.allclose(gmm(x, sigma, Cond()), exact, atol=1e-12)


def test_mixture_null_label_approaches_the_dominant_component():
    gmm = GaussianMixtureField(
        torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 3.0]], dtype=torch.float64), std=0.2
    )
    sigma = torch.full((3,), 0.2, dtype=torch.float64)
    # states on the path of component k, near its mean: the posterior is ~1 there
    x = (1 - 0.2) * gmm.means + 0.2 * torch.randn(3, 2, generator=gen(), dtype=torch.float64) * 0.5
    null = gmm(x, sigma, Cond(label=torch.full((3,), -1)))
    labelled = gmm(x, sigma, Cond(label=torch.arange(3)))
    assert torch.allclose(null, labelled, atol=1e-6)
    # and far from dominance (the midpoint of two means) it is not any single component
    mid = torch.zeros(1, 2, dtype=torch.float64)
    s1 = sigma[:1]
    v_mid = gmm(mid, s1, Cond(label=torch.tensor([-1])))
    for k in range(3):
        assert not torch.allclose(v_mid, gmm(mid, s1, Cond(label=torch.tensor([k]))), atol=1e-3)


def test_mixture_ode_samples_every_component_equally():
    gmm = GaussianMixtureField(torch.tensor([[-2.0], [2.0]], dtype=torch.float64), std=0.3)
    n = 4000
    noise = torch.randn(n, 1, generator=gen(4), dtype=torch.float64)
    out = euler_sample(
        gmm, noise, Cond(label=torch.full((n,), -1)), sigma_schedule(100, dtype=torch.float64)
    ).final
    right = out[:, 0] > 0
    assert float(right.double().mean()) == pytest.approx(0.5, abs=0.04)
    assert float(out[right].std()) == pytest.approx(0.3, abs=0.03)
    assert float(out[~right].mean()) == pytest.approx(-2.0, abs=0.05)


def test_guided_sampling_increases_class_posterior():
    # two overlapping 1-D classes; guidance at w > 1 must push samples of class 0 to where class 0 is more
    # probable (vs the data mixture) than the plain conditional samples (w = 1) are.
    means = torch.tensor([[-0.5], [0.5]], dtype=torch.float64)
    std = 0.5
    gmm = GaussianMixtureField(means, std=std)
    n = 4000
    noise = torch.randn(n, 1, generator=gen(7), dtype=torch.float64)
    cond = Cond(label=torch.zeros(n, dtype=torch.long))
    sigmas = sigma_schedule(40, 3.0, dtype=torch.float64)

    def posterior0(x):
        log_p = -((x - means.T) ** 2) / (2 * std**2)  # [n, 2]
        return torch.softmax(log_p, dim=1)[:, 0].mean().item()

    results = {w: euler_sample(Guidance(gmm, w), noise, cond, sigmas).final for w in (1.0, 3.0)}
    # w = 1 samples class 0 itself: mean -0.5, std 0.5
    assert float(results[1.0].mean()) == pytest.approx(-0.5, abs=0.05)
    assert float(results[1.0].std()) == pytest.approx(std, abs=0.05)
    p1, p3 = posterior0(results[1.0]), posterior0(results[3.0])
    assert p3 > p1 + 0.05
    assert float(results[3.0].mean()) < float(results[1.0].mean()) - 0.2
