"""Sigma schedules, the flow interpolation, Euler sampling and recorded / early-stopped rollouts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldkit.cond import Cond
from fieldkit.field import broadcast_sigma
from fieldkit.flow import (
    Trajectory,
    euler_sample,
    euler_step,
    generate,
    interpolate,
    rollout_states,
    shift_sigma,
    sigma_schedule,
    target_velocity,
)

FAST = settings(max_examples=30, deadline=None)


def wiggly(x, sigma, cond):
    """A nonlinear field that reads x, sigma and the cond, so a wrong argument anywhere changes the result."""
    s = broadcast_sigma(sigma, x)
    return torch.tanh(x) * (1 + s) + cond["offset"].reshape(-1, *([1] * (x.dim() - 1))) - s * x**2


def setup(batch: int = 3, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, 2, 3, 3, generator=gen, dtype=dtype)
    cond = Cond(offset=torch.randn(batch, generator=gen, dtype=dtype))
    return noise, cond


# --- shift and schedules --------------------------------------------------------------------------


@FAST
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20))
def test_shift_one_is_identity(values):
    sigma = torch.tensor(values, dtype=torch.float64)
    assert torch.equal(shift_sigma(sigma, 1.0), sigma)


@FAST
@given(shift=st.floats(0.05, 20.0), values=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=20))
def test_shift_is_monotone_with_fixed_endpoints(shift, values):
    ends = shift_sigma(torch.tensor([0.0, 1.0], dtype=torch.float64), shift)
    assert ends[0] == 0.0
    assert ends[1] == pytest.approx(1.0, abs=1e-15)
    sigma = torch.tensor(sorted(values), dtype=torch.float64)
    out = shift_sigma(sigma, shift)
    assert bool((out[1:] >= out[:-1]).all())
    assert bool(((out >= 0) & (out <= 1 + 1e-15)).all())
    # shift > 1 spends more of the schedule at high noise, shift < 1 at low noise
    if shift > 1:
        assert bool((out >= sigma - 1e-15).all())
    elif shift < 1:
        assert bool((out <= sigma + 1e-15).all())


def test_shift_must_be_positive():
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError):
            shift_sigma(torch.tensor([0.5]), bad)


def test_sigma_schedule_shift3_four_steps_is_sd3_formula():
    # SD3: sigma' = s t / (1 + (s - 1) t) on t = 1, 3/4, 1/2, 1/4, 0 with s = 3:
    # 3(3/4)/(1 + 2(3/4)) = 9/10, 3(1/2)/2 = 3/4, 3(1/4)/(3/2) = 1/2
    expected = torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0], dtype=torch.float64)
    got = sigma_schedule(4, shift=3.0, dtype=torch.float64)
    assert torch.allclose(got, expected, rtol=0, atol=1e-15)
    assert sigma_schedule(4, 3.0).dtype == torch.float32


@FAST
@given(steps=st.integers(1, 64), shift=st.floats(0.1, 10.0))
def test_sigma_schedule_shape_and_endpoints(steps, shift):
    s = sigma_schedule(steps, shift, dtype=torch.float64)
    assert s.shape == (steps + 1,)
    assert s[0] == pytest.approx(1.0, abs=1e-15) and s[-1] == 0.0
    assert bool((s[1:] < s[:-1]).all())


def test_sigma_schedule_needs_a_step():
    with pytest.raises(ValueError):
        sigma_schedule(0)


def test_beta52_query_index_median_sigma_matches_design_doc():
    # DanceOPD low_t: i = min(floor(u N), N - 1), u ~ Beta(5, 2), over N = 16 steps of a shift-3 schedule.
    # Beta(5, 2) has pdf 30 u^4 (1 - u) and cdf F(u) = 6 u^5 - 5 u^6.
    n = 16

    def cdf(u: float) -> float:
        return 6 * u**5 - 5 * u**6

    pmf = [cdf((k + 1) / n) - cdf(k / n) for k in range(n)]
    assert math.isclose(sum(pmf), 1.0)
    sigmas = sigma_schedule(n, shift=3.0, dtype=torch.float64)[:n]
    cum = 0.0
    for k, p in enumerate(pmf):
        cum += p
        if cum >= 0.5:
            median_index = k
            break
    assert median_index == 11  # digest: "the median index is 11 of 0..15"
    assert float(sigmas[median_index]) == pytest.approx(0.58, abs=0.005)
    mean = sum(p * float(s) for p, s in zip(pmf, sigmas, strict=True))
    assert mean == pytest.approx(0.55, abs=0.005)
    assert pmf[-1] == pytest.approx(0.05, abs=0.01)  # "the terminal index 15 has about 5% probability"

    # the closed-form pmf agrees with sampling the index the way the method does
    gen_u = torch.distributions.Beta(5.0, 2.0)
    torch.manual_seed(0)
    idx = (gen_u.sample((200_000,)) * n).floor().long().clamp_max(n - 1)
    empirical = torch.bincount(idx, minlength=n).double() / idx.numel()
    assert torch.allclose(empirical, torch.tensor(pmf, dtype=torch.float64), atol=4e-3)


# --- interpolation ------------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 5))
def test_interpolate_and_target_velocity_are_consistent(seed, batch):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, 2, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(batch, 2, 4, generator=gen, dtype=torch.float64)
    sigma = torch.rand(batch, generator=gen, dtype=torch.float64)
    xs = interpolate(x0, eps, sigma)
    v = target_velocity(x0, eps)
    s = sigma.reshape(-1, 1, 1)
    assert torch.allclose(xs, (1 - s) * x0 + s * eps, rtol=0, atol=1e-15)
    assert torch.equal(v, eps - x0)
    # an Euler step along the target velocity lands on either end: to sigma 0 -> x0, to sigma 1 -> eps
    assert torch.allclose(euler_step(xs, v, sigma, torch.zeros(batch, dtype=torch.float64)), x0, atol=1e-14)
    assert torch.allclose(euler_step(xs, v, sigma, torch.ones(batch, dtype=torch.float64)), eps, atol=1e-14)
    assert torch.allclose(xs - s * v, x0, atol=1e-14)


def test_interpolate_is_exact_with_dyadic_values():
    x0 = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    eps = torch.tensor([[3.0, 0.25], [-1.0, 2.0]])
    sigma = torch.tensor([0.25, 0.75])
    xs = interpolate(x0, eps, sigma)
    v = target_velocity(x0, eps)
    assert torch.equal(xs, torch.tensor([[1.5, -1.4375], [-0.625, 2.5]]))
    assert torch.equal(xs - sigma[:, None] * v, x0)
    assert torch.equal(interpolate(x0, eps, torch.zeros(2)), x0)
    assert torch.equal(interpolate(x0, eps, torch.ones(2)), eps)


def test_euler_step_formula_per_sample_and_scalar():
    x = torch.ones(2, 3)
    v = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 1.0]])
    out = euler_step(x, v, torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.25]))
    assert torch.equal(out, torch.tensor([[0.5, 0.0, -0.5], [1.25, 1.0, 0.75]]))
    out = euler_step(x, v, torch.tensor(0.75), torch.tensor(0.25))
    assert torch.equal(out, x - 0.5 * v)


# --- Euler sampling ------------------------------------------------------------------------------------


def test_constant_field_lands_exactly():
    # with v = eps - x0 constant, the straight path is exact for any schedule: x(0) = eps - v = x0
    x0 = torch.tensor([[1.0, -2.0, 0.5]])
    eps = torch.tensor([[0.25, 3.0, -1.0]])
    v = target_velocity(x0, eps)
    traj = euler_sample(lambda x, s, c: v.expand_as(x), eps, Cond(), sigma_schedule(4))  # dyadic steps
    assert torch.equal(traj.final, x0)
    assert traj.nfe == 4


@FAST
@given(steps=st.integers(1, 30), shift=st.floats(0.2, 8.0), seed=st.integers(0, 1000))
def test_constant_field_lands_for_any_schedule(steps, shift, seed):
    gen = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    v = target_velocity(x0, eps)
    sigmas = sigma_schedule(steps, shift, dtype=torch.float64)
    traj = euler_sample(lambda x, s, c: v.expand_as(x), eps, Cond(), sigmas)
    assert torch.allclose(traj.final, x0, atol=1e-12)


@FAST
@given(batch=st.integers(1, 9), rows=st.integers(1, 10))
def test_generate_in_chunks_draws_the_same_samples_with_smaller_calls(counting, batch, rows):
    """The noise is drawn whole before the chunks: chunked samples equal the whole batch's (a per-sample
    field), and no call sees more than ``rows`` samples."""
    _, cond = setup(batch)
    sigmas = sigma_schedule(4, 3.0, dtype=torch.float64)
    whole = generate(wiggly, cond, (2, 3, 3), sigmas, torch.Generator().manual_seed(1))
    field = counting(wiggly)
    chunked = generate(field, cond, (2, 3, 3), sigmas, torch.Generator().manual_seed(1), rows=rows)
    assert torch.equal(chunked, whole.to(chunked.dtype))
    assert max(field.batch_sizes) == min(rows, batch) and field.calls == 4 * math.ceil(batch / rows)


def test_generate_refuses_chunks_of_no_rows():
    _, cond = setup(2)
    with pytest.raises(ValueError, match="rows must be at least 1, got 0"):
        generate(wiggly, cond, (2, 3, 3), sigma_schedule(4, 3.0), torch.Generator(), rows=0)


def test_record_keeps_pre_step_states_only(counting):
    noise, cond = setup()
    field = counting(wiggly)
    sigmas = sigma_schedule(5, 3.0, dtype=torch.float64)
    traj = euler_sample(field, noise, cond, sigmas, record=True)
    assert isinstance(traj, Trajectory)
    assert traj.nfe == field.calls == 5
    assert traj.states.shape == (5, *noise.shape)
    assert torch.equal(traj.sigmas, sigmas[:5])
    assert torch.equal(traj.states[0], noise)
    # every recorded state is exactly a state the field was queried at, at the recorded sigma
    for i in range(5):
        assert torch.equal(field.sigmas[i], sigmas[i].expand(noise.shape[0]))
        assert field.batch_sizes[i] == noise.shape[0]
    # the states chain by Euler steps, and the clean end state is the step after the last one, not recorded
    for i in range(5):
        nxt = traj.states[i + 1] if i < 4 else traj.final
        v = wiggly(traj.states[i], sigmas[i].expand(3), cond)
        assert torch.equal(euler_step(traj.states[i], v, sigmas[i], sigmas[i + 1]), nxt)
    assert not any(torch.equal(s, traj.final) for s in traj.states)


def test_unrecorded_run_keeps_no_states():
    noise, cond = setup()
    traj = euler_sample(wiggly, noise, cond, sigma_schedule(3, dtype=torch.float64))
    assert traj.states.shape == (0, *noise.shape)
    assert traj.nfe == 3


@pytest.mark.parametrize("stop", [0, 1, 3, 6])
def test_stop_at_counts_nfe_and_matches_full_run(counting, stop):
    noise, cond = setup()
    sigmas = sigma_schedule(7, 3.0, dtype=torch.float64)
    full = euler_sample(wiggly, noise, cond, sigmas, record=True)
    field = counting(wiggly)
    part = euler_sample(field, noise, cond, sigmas, stop_at=stop, record=True)
    assert field.calls == part.nfe == stop
    assert torch.equal(part.final, full.states[stop])
    # a stopped, recorded run keeps states 0..stop (the stop state is a pre-step state of the full run)
    assert torch.equal(part.states, full.states[: stop + 1])
    assert torch.equal(part.sigmas, sigmas[: stop + 1])
    unrecorded = euler_sample(wiggly, noise, cond, sigmas, stop_at=stop)
    assert torch.equal(unrecorded.final, full.states[stop])


def test_stop_at_last_step_is_full_run():
    noise, cond = setup()
    sigmas = sigma_schedule(4, dtype=torch.float64)
    full = euler_sample(wiggly, noise, cond, sigmas, record=True)
    same = euler_sample(wiggly, noise, cond, sigmas, stop_at=4, record=True)
    assert torch.equal(same.final, full.final) and torch.equal(same.states, full.states)


def test_sampling_runs_in_the_state_dtype():
    noise, cond = setup(dtype=torch.float64)
    traj = euler_sample(wiggly, noise, cond, sigma_schedule(3, dtype=torch.float32), record=True)
    assert traj.final.dtype == traj.states.dtype == traj.sigmas.dtype == torch.float64


@pytest.mark.parametrize(
    "sigmas",
    [
        torch.tensor([0.0, 0.5, 1.0]),  # increasing
        torch.tensor([1.0, 0.5, 0.5, 0.0]),  # not strict
        torch.tensor([1.0]),  # no step
        torch.tensor([[1.0, 0.0]]),  # not 1-D
    ],
)
def test_bad_sigmas_raise(sigmas):
    noise, cond = setup()
    with pytest.raises(ValueError):
        euler_sample(wiggly, noise, cond, sigmas)
    with pytest.raises(ValueError):
        rollout_states(wiggly, noise, cond, sigmas, torch.zeros(3, 1, dtype=torch.long))


@pytest.mark.parametrize("stop", [-1, 5])
def test_bad_stop_at_raises(stop):
    noise, cond = setup()
    with pytest.raises(ValueError):
        euler_sample(wiggly, noise, cond, sigma_schedule(4), stop_at=stop)


# --- rollout states -------------------------------------------------------------------------------------


@FAST
@given(
    steps=st.integers(1, 8),
    batch=st.integers(1, 4),
    k=st.integers(1, 3),
    shift=st.sampled_from([1.0, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_rollout_states_equals_gather_from_full_run(counting, steps, batch, k, shift, seed):
    noise, cond = setup(batch, seed)
    sigmas = sigma_schedule(steps, shift, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, steps, (batch, k), generator=gen)
    full = euler_sample(wiggly, noise, cond, sigmas, record=True)
    field = counting(wiggly)
    states, nfe = rollout_states(field, noise, cond, sigmas, indices)
    assert states.shape == (batch, k, *noise.shape[1:])
    assert nfe == field.calls == int(indices.max())
    for b in range(batch):
        for j in range(k):
            assert torch.equal(states[b, j], full.states[int(indices[b, j]), b])


def test_rollout_state_zero_needs_no_nfe(counting):
    noise, cond = setup()
    field = counting(wiggly)
    states, nfe = rollout_states(field, noise, cond, sigma_schedule(4), torch.zeros(3, 2, dtype=torch.long))
    assert nfe == field.calls == 0
    assert torch.equal(states, noise[:, None].expand(3, 2, *noise.shape[1:]))


@pytest.mark.parametrize(
    "indices",
    [
        torch.tensor([[0], [4], [1]]),  # index 4 is the clean end state of a 4-step run: never a query
        torch.tensor([[0], [-1], [1]]),
        torch.tensor([0, 1, 2]),  # not [B, K]
        torch.tensor([[0], [1]]),  # wrong batch
    ],
)
def test_bad_rollout_indices_raise(indices):
    noise, cond = setup()
    with pytest.raises(ValueError):
        rollout_states(wiggly, noise, cond, sigma_schedule(4), indices)


class _Scheduled:
    """A field whose pipeline samples on its own sigmas (as the sd3 and zimage fields loaded from folders)."""

    def __init__(self, sigmas: torch.Tensor | None) -> None:
        self.sigmas = sigmas
        self.asked: list[tuple[int, tuple[int, ...]]] = []

    def sampling_sigmas(self, steps: int, shape: tuple[int, ...]) -> torch.Tensor | None:
        self.asked.append((steps, shape))
        return self.sigmas


def test_rollout_sigmas_take_the_models_own_schedule_unless_asked_for_the_shift_grid() -> None:
    from fieldkit.errors import FieldkitError
    from fieldkit.flow import rollout_sigmas

    own = torch.tensor([1.0, 0.9, 0.5, 0.0], dtype=torch.float64)
    field = _Scheduled(own)
    for schedule in ("auto", "model"):
        got = rollout_sigmas(schedule, 3, 3.0, field, (16, 8, 8))
        assert got.dtype == torch.float32 and torch.equal(got, own.float())
    assert field.asked == [(3, (16, 8, 8))] * 2
    torch.testing.assert_close(rollout_sigmas("shift", 3, 3.0, field, (16, 8, 8)), sigma_schedule(3, 3.0))
    assert len(field.asked) == 2  # the shift grid never asks the field
    for plain in (_Scheduled(None), object()):
        torch.testing.assert_close(rollout_sigmas("auto", 3, 3.0, plain, (1,)), sigma_schedule(3, 3.0))
        with pytest.raises(FieldkitError, match=r"flow\.schedule is 'model'"):
            rollout_sigmas("model", 3, 3.0, plain, (1,))


def test_an_operators_schedule_is_the_one_of_the_field_it_is_built_from() -> None:
    """Guidance over a teacher with a scheduler samples on the teacher's sigmas (it fell back to the even
    grid: operators have no scheduler of their own)."""
    from fieldkit import loads_graph
    from fieldkit.commands.sources import sampling_sigmas
    from fieldkit.field import ModuleField
    from fieldkit.flow import rollout_sigmas
    from fieldkit.ops.guidance import Guidance

    own = torch.tensor([1.0, 0.95, 0.6, 0.0])

    class Teacher(ModuleField):
        def forward(self, x, sigma, cond):
            return x

        def sampling_sigmas(self, steps, shape):
            return own

    guided = Guidance(Teacher(), 3.0)
    assert torch.equal(rollout_sigmas("auto", 3, 3.0, guided, (1, 4, 4)), own)
    graph = loads_graph(
        "fields: {a: {type: gaussian_mixture, classes: 2, shape: [1, 4, 4]}}\nflow: {steps: 3, shift: 3.0}"
    )
    plain = {"plain": Guidance(wiggly, 1.0)}  # a compared field without a scheduler comes first
    assert torch.equal(sampling_sigmas(graph, plain, (1, 4, 4), route_field=guided), own)
    assert torch.equal(sampling_sigmas(graph, {**plain, "guided": guided}, (1, 4, 4)), own)
