"""The operator algebra: guidance, mix, masked, toward_source, time_switch, scale, sum."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fieldkit.analytic import GaussianMixtureField
from fieldkit.cond import Cond
from fieldkit.errors import FieldkitError
from fieldkit.field import FunctionField, ModuleField, as_field, broadcast_sigma, uncond_of
from fieldkit.flow import euler_sample, interpolate, sigma_schedule, target_velocity
from fieldkit.ops import Guidance, Masked, Mix, Operator, Scale, SigmaWeight, Sum, TimeSwitch, TowardSource

FAST = settings(max_examples=30, deadline=None)
D = 4


def text_field(x, sigma, cond):
    """Nonlinear in x, sigma and cond['text'] ([B, D]), so cond/uncond and row mix-ups all show."""
    s = broadcast_sigma(sigma, x)
    return torch.tanh(x) * cond["text"] + s * cond["text"] ** 2 - 0.5 * x


def other_field(x, sigma, cond):
    s = broadcast_sigma(sigma, x)
    return x**2 * s - cond["text"]


def const(value: float):
    return lambda x, sigma, cond: torch.full_like(x, value)


def inputs(batch: int = 3, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, D, generator=gen, dtype=dtype)
    sigma = torch.rand(batch, generator=gen, dtype=dtype)
    cond = Cond(
        text=torch.randn(batch, D, generator=gen, dtype=dtype),
        source=torch.randn(batch, D, generator=gen, dtype=dtype),
        nulls={"text": torch.zeros(1, D, dtype=dtype)},
    )
    return x, sigma, cond


class LinearField(ModuleField):
    """A field with parameters (and a buffer), for dtype / freeze propagation."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, D)
        self.register_buffer("bias2", torch.zeros(D))
        self.drop = nn.Dropout(0.5)

    def forward(self, x, sigma, cond):
        return self.lin(x) + self.bias2


class PlainModule(nn.Module):
    """An ordinary module with the field signature but not a ModuleField."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(D))

    def forward(self, x, sigma, cond):
        return x * self.w


# --- guidance -----------------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 5))
def test_guidance_at_w1_is_the_conditional_field(counting, seed, batch):
    x, sigma, cond = inputs(batch, seed)
    field = counting(text_field)
    out = Guidance(field, 1.0)(x, sigma, cond)
    assert torch.equal(out, text_field(x, sigma, cond))
    assert field.calls == 1 and field.batch_sizes == [batch]


@FAST
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 5), w=st.floats(-2.0, 8.0))
def test_guidance_is_one_batched_call_equal_to_two_calls(counting, seed, batch, w):
    x, sigma, cond = inputs(batch, seed)
    field = counting(text_field)
    out = Guidance(field, w)(x, sigma, cond)
    if w != 1.0:
        assert field.calls == 1
        assert field.batch_sizes == [2 * batch]
        seen = field.conds[0]
        # first half: the cond rows; second half: the unconditional rows (text -> its null, source kept)
        assert torch.equal(seen["text"][:batch], cond["text"])
        assert torch.equal(seen["text"][batch:], torch.zeros(batch, D, dtype=x.dtype))
        assert torch.equal(seen["source"], torch.cat([cond["source"], cond["source"]]))
        assert torch.equal(field.sigmas[0], torch.cat([sigma, sigma]))
    v_c = text_field(x, sigma, cond)
    v_u = text_field(x, sigma, cond.uncond())
    assert torch.allclose(out, v_u + w * (v_c - v_u), atol=1e-12)


def test_guidance_w0_is_the_unconditional_field():
    x, sigma, cond = inputs()
    assert torch.allclose(Guidance(text_field, 0.0)(x, sigma, cond), text_field(x, sigma, cond.uncond()))


def test_guidance_uses_the_fields_own_uncond(counting):
    gmm = GaussianMixtureField.random(3, (D,), std=0.5, seed=1).double()
    x, sigma, _ = inputs(4)
    # a Cond-level null for "label" that the field's own uncond must override
    cond = Cond(label=torch.tensor([0, 1, 2, 1]), nulls={"label": torch.tensor([2])})
    field = counting(gmm)
    out = Guidance(field, 3.0)(x, sigma, cond)
    assert field.calls == 1
    assert torch.equal(field.conds[0]["label"], torch.tensor([0, 1, 2, 1, -1, -1, -1, -1]))
    v_c = gmm(x, sigma, cond)
    v_u = gmm(x, sigma, Cond(label=torch.full((4,), -1)))
    assert torch.allclose(out, v_u + 3.0 * (v_c - v_u), atol=1e-12)
    assert not torch.allclose(out, v_c)  # guidance did something


def test_uncond_of_falls_back_to_cond_uncond():
    _, _, cond = inputs()
    u = uncond_of(text_field, cond)
    assert torch.equal(u["text"], torch.zeros_like(cond["text"]))
    assert torch.equal(u["source"], cond["source"])


def test_wrapped_callable_keeps_its_own_uncond():
    class Labelled:
        def __call__(self, x, sigma, cond):
            return x * cond["label"][:, None]

        def uncond(self, cond):
            return cond.replace(label=torch.zeros_like(cond["label"]))

    fn = Labelled()
    wrapped = as_field(fn)
    assert isinstance(wrapped, FunctionField)
    cond = Cond(label=torch.tensor([2.0, 3.0]))
    assert torch.equal(uncond_of(wrapped, cond)["label"], torch.zeros(2))
    x = torch.ones(2, D)
    out = Guidance(fn, 2.0)(x, torch.rand(2), cond)
    assert torch.equal(out, 2.0 * x * cond["label"][:, None])  # v_u = 0


# --- mix -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hot", [0, 1, 2])
def test_one_hot_mix_is_that_field(hot):
    x, sigma, cond = inputs()
    fields = [text_field, other_field, const(7.0)]
    weights = [0.0, 0.0, 0.0]
    weights[hot] = 2.5
    out = Mix(fields, weights)(x, sigma, cond)
    assert torch.allclose(out, fields[hot](x, sigma, cond), rtol=0, atol=1e-14)


@FAST
@given(
    seed=st.integers(0, 2**16),
    w1=st.floats(0.01, 10.0) | st.builds(SigmaWeight, st.floats(0.01, 5.0), st.floats(0.01, 5.0)),
    w2=st.floats(0.0, 10.0) | st.builds(SigmaWeight, st.floats(0.0, 5.0), st.floats(0.0, 5.0)),
)
def test_mix_of_copies_is_the_field(seed, w1, w2):
    x, sigma, cond = inputs(3, seed)
    out = Mix([text_field, text_field], [w1, w2])(x, sigma, cond)
    assert torch.allclose(out, text_field(x, sigma, cond), atol=1e-12)


def test_mix_default_weights_average():
    x, sigma, cond = inputs()
    out = Mix([const(1.0), const(4.0)])(x, sigma, cond)
    assert torch.allclose(out, torch.full_like(x, 2.5))


@FAST
@given(a=st.floats(0.0, 5.0), b=st.floats(0.0, 5.0), c=st.floats(0.1, 5.0), seed=st.integers(0, 1000))
def test_mix_sigma_weight_follows_formula(a, b, c, seed):
    x, sigma, cond = inputs(4, seed)
    sigma = torch.cat([torch.tensor([0.0, 1.0], dtype=x.dtype), sigma[2:]])
    # field 1 weighted a at noise, b at data; field 2 a constant weight c
    out = Mix([const(1.0), const(-2.0)], [SigmaWeight(a, b), c])(x, sigma, cond)
    w1 = sigma * a + (1 - sigma) * b
    expected = (w1 * 1.0 + c * -2.0) / (w1 + c)
    assert torch.allclose(out, expected[:, None].expand_as(x), atol=1e-12)


def test_sigma_weight_is_linear_in_sigma():
    w = SigmaWeight(at_noise=3.0, at_data=1.0)
    assert torch.allclose(w(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([1.0, 2.0, 3.0]))


def test_sigma_weighted_switch_between_two_fields():
    x, sigma, cond = inputs(5)
    mix = Mix([text_field, other_field], [SigmaWeight(1.0, 0.0), SigmaWeight(0.0, 1.0)])
    s = sigma[:, None]
    expected = s * text_field(x, sigma, cond) + (1 - s) * other_field(x, sigma, cond)
    assert torch.allclose(mix(x, sigma, cond), expected, atol=1e-12)


@pytest.mark.parametrize(
    "weights", [[-1.0, 1.0], [1.0, SigmaWeight(1.0, -0.5)], [SigmaWeight(-1.0, 2.0), 1.0]]
)
def test_mix_negative_weights_raise(weights):
    with pytest.raises(ValueError, match=">= 0"):
        Mix([text_field, other_field], weights)


def test_mix_zero_weights_raise():
    x, sigma, cond = inputs()
    with pytest.raises(ValueError, match="sum to zero"):
        Mix([text_field, other_field], [0.0, 0.0])(x, sigma, cond)
    # weights that vanish only at the data end fail there, and only there
    mix = Mix([text_field], [SigmaWeight(1.0, 0.0)])
    mix(x, torch.full((3,), 0.5, dtype=x.dtype), cond)
    with pytest.raises(ValueError, match="sum to zero"):
        mix(x, torch.tensor([0.5, 0.0, 0.5], dtype=x.dtype), cond)


def test_mix_weight_count_must_match():
    with pytest.raises(ValueError):
        Mix([text_field, other_field], [1.0])


# --- masked ------------------------------------------------------------------------------------------


def test_masked_all_ones_is_inside_all_zeros_is_outside():
    x, sigma, cond = inputs()
    ones = Masked(text_field, other_field)(x, sigma, cond.replace(mask=torch.ones(3, 1, dtype=x.dtype)))
    zeros = Masked(text_field, other_field)(x, sigma, cond.replace(mask=torch.zeros(3, 1, dtype=x.dtype)))
    assert torch.equal(ones, text_field(x, sigma, cond))
    assert torch.equal(zeros, other_field(x, sigma, cond))


def test_masked_soft_mask_formula_and_fixed_equals_cond_mask():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, 4, generator=gen)
    sigma = torch.rand(2, generator=gen)
    cond = Cond(text=torch.randn(2, 3, 4, 4, generator=gen))
    mask = torch.rand(2, 1, 4, 4, generator=gen)
    v_in, v_out = text_field(x, sigma, cond), other_field(x, sigma, cond)
    from_cond = Masked(text_field, other_field)(x, sigma, cond.replace(mask=mask))
    assert torch.allclose(from_cond, mask * v_in + (1 - mask) * v_out, atol=1e-6)
    # a fixed mask (one for the whole batch) is used as given, whatever the Cond carries
    fixed = Masked(text_field, other_field, mask=mask[:1])
    out = fixed(x, sigma, cond.replace(mask=torch.zeros(2, 1, 4, 4)))
    assert torch.allclose(out, mask[:1] * v_in + (1 - mask[:1]) * v_out, atol=1e-6)
    assert torch.allclose(fixed(x, sigma, cond), out)


def test_masked_custom_key_and_missing_key_raises():
    x, sigma, cond = inputs()
    masked = Masked(text_field, other_field, mask_key="region")
    out = masked(x, sigma, cond.replace(region=torch.ones(3, 1, dtype=x.dtype)))
    assert torch.equal(out, text_field(x, sigma, cond))
    with pytest.raises(FieldkitError, match="region") as err:
        masked(x, sigma, cond.replace(mask=torch.ones(3, 1)))
    assert err.value.hint


# --- toward_source -------------------------------------------------------------------------------------


def decreasing_schedules():
    shifted = st.builds(
        lambda steps, shift: sigma_schedule(steps, shift, dtype=torch.float64),
        st.integers(1, 40),
        st.floats(0.1, 10.0),
    )
    arbitrary = st.lists(st.floats(1e-12, 1.0, exclude_max=True), min_size=0, max_size=20, unique=True).map(
        lambda inner: torch.tensor([1.0, *sorted(inner, reverse=True), 0.0], dtype=torch.float64)
    )
    return shifted | arbitrary


@FAST
@given(sigmas=decreasing_schedules(), seed=st.integers(0, 2**16), scale=st.floats(0.1, 100.0))
def test_toward_source_lands_on_source_from_any_x(sigmas, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(3, 2, 2, 2, generator=gen, dtype=torch.float64)
    source = torch.randn(3, 2, 2, 2, generator=gen, dtype=torch.float64)
    traj = euler_sample(TowardSource(), x, Cond(source=source), sigmas)
    # exact up to rounding, or up to min_sigma * |x - source| when the schedule dips below min_sigma
    assert torch.allclose(traj.final, source, rtol=0, atol=1e-5 * scale)


def test_toward_source_is_the_flow_velocity_to_the_source():
    # on the straight path from source to noise, (x - source) / sigma is exactly eps - source
    x, sigma, cond = inputs(4)
    eps = torch.randn_like(x)
    xs = interpolate(cond["source"], eps, sigma)
    v = TowardSource()(xs, sigma, cond)
    assert torch.allclose(v, target_velocity(cond["source"], eps), atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_toward_source_finite_at_tiny_sigma(dtype):
    x, _, cond = inputs(3, dtype=dtype)
    sigma = torch.tensor([0.0, 1e-30, 1e-8], dtype=dtype)
    v = TowardSource()(x, sigma, cond)
    assert bool(torch.isfinite(v).all())
    # the velocity is still the (clamped) straight-line one
    assert torch.allclose(v[0], (x[0] - cond["source"][0]) / 1e-6)


def test_toward_source_custom_key_and_missing_source_raises():
    x, sigma, cond = inputs()
    field = TowardSource(source_key="before")
    out = field(x, sigma, cond.replace(before=cond["source"]))
    assert torch.allclose(out, TowardSource()(x, sigma, cond))
    with pytest.raises(FieldkitError, match="before"):
        field(x, sigma, cond)


# --- time_switch ---------------------------------------------------------------------------------------


def test_time_switch_picks_per_sample_with_matching_cond_rows(counting):
    def high_fn(x, sigma, cond):
        return x + 1 + cond["id"][:, None]

    def low_fn(x, sigma, cond):
        return -x + 10 * cond["id"][:, None]

    high, low = counting(high_fn), counting(low_fn)
    switch = TimeSwitch(high, low, sigma0=0.5)
    x = torch.arange(5 * D, dtype=torch.float64).reshape(5, D)
    sigma = torch.tensor([0.9, 0.2, 0.5, 0.1, 0.7], dtype=torch.float64)
    cond = Cond(id=torch.arange(5, dtype=torch.float64) * 100)
    out = switch(x, sigma, cond)
    assert high.calls == low.calls == 1
    # sigma >= sigma0 goes high (boundary included), the rest low; each side sees only its rows
    assert torch.equal(high.conds[0]["id"], torch.tensor([0.0, 200.0, 400.0], dtype=torch.float64))
    assert torch.equal(low.conds[0]["id"], torch.tensor([100.0, 300.0], dtype=torch.float64))
    assert torch.equal(high.sigmas[0], sigma[[0, 2, 4]]) and torch.equal(low.sigmas[0], sigma[[1, 3]])
    for row in range(5):
        fn = high_fn if sigma[row] >= 0.5 else low_fn
        assert torch.equal(out[row : row + 1], fn(x[row : row + 1], sigma[row : row + 1], cond.index(row)))


def test_time_switch_whole_batch_one_side(counting):
    x, _, cond = inputs(3)
    high, low = counting(text_field), counting(other_field)
    switch = TimeSwitch(high, low, sigma0=0.4)
    hi = torch.full((3,), 0.8, dtype=x.dtype)
    assert torch.equal(switch(x, hi, cond), text_field(x, hi, cond))
    lo = torch.full((3,), 0.1, dtype=x.dtype)
    assert torch.equal(switch(x, lo, cond), other_field(x, lo, cond))
    assert high.batch_sizes == [3] and low.batch_sizes == [3]


def test_time_switch_sigma0_range():
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            TimeSwitch(text_field, other_field, bad)


# --- scale / sum ---------------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 2**16), a=st.floats(-5.0, 5.0), b=st.floats(-5.0, 5.0))
def test_scale_and_sum_are_linear(seed, a, b):
    x, sigma, cond = inputs(3, seed)
    f, g = text_field(x, sigma, cond), other_field(x, sigma, cond)
    assert torch.allclose(Scale(text_field, a)(x, sigma, cond), a * f, atol=1e-12)
    assert torch.allclose(Sum([text_field, other_field], [a, b])(x, sigma, cond), a * f + b * g, atol=1e-12)
    assert torch.allclose(Sum([text_field, other_field])(x, sigma, cond), f + g, atol=1e-12)
    # Sum of scales equals a Sum with coefficients
    nested = Sum([Scale(text_field, a), Scale(other_field, b)])
    assert torch.allclose(nested(x, sigma, cond), a * f + b * g, atol=1e-12)


def test_sum_coefficient_count_must_match():
    with pytest.raises(ValueError):
        Sum([text_field, other_field], [1.0, 2.0, 3.0])


def test_operator_needs_fields():
    for build in (lambda: Sum([]), lambda: Mix([])):
        with pytest.raises(ValueError):
            build()


# --- composition and module behaviour ------------------------------------------------------------------


def test_operators_compose():
    x, sigma, cond = inputs(4)
    cond = cond.replace(mask=(torch.rand(4, D) > 0.5).double())
    inner = Mix(
        [Masked(text_field, other_field), Masked(TowardSource(), text_field)],
        [SigmaWeight(2.0, 1.0), 1.0],
    )
    graph = Guidance(inner, 3.0)
    out = graph(x, sigma, cond)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert bool(torch.isfinite(out).all())
    v_c, v_u = inner(x, sigma, cond), inner(x, sigma, cond.uncond())
    assert torch.allclose(out, v_u + 3.0 * (v_c - v_u), atol=1e-10)
    # and a composed graph is itself a field that samples
    traj = euler_sample(graph, x, cond, sigma_schedule(4, 3.0, dtype=torch.float64))
    assert traj.final.shape == x.shape


def module_tree():
    lin = LinearField()
    gmm = GaussianMixtureField.random(2, (D,), std=0.3)
    graph = Guidance(
        Mix([Masked(lin, gmm, mask=torch.ones(1, D)), TimeSwitch(TowardSource(), lambda x, s, c: x, 0.5)]),
        2.0,
    )
    return graph, lin, gmm


def test_operators_are_modules_and_to_dtype_propagates():
    graph, lin, gmm = module_tree()
    assert isinstance(graph, nn.Module) and isinstance(graph, Operator)
    assert any(m is lin for m in graph.modules()) and any(m is gmm for m in graph.modules())
    graph.to(torch.float64)
    assert lin.lin.weight.dtype == torch.float64 and lin.bias2.dtype == torch.float64
    assert gmm.means.dtype == torch.float64
    masked = graph.fields[0].fields[0]
    assert masked.fixed_mask.dtype == torch.float64
    x, sigma, _ = inputs(3)
    cond = Cond(label=torch.tensor([0, 1, 0]), source=torch.randn(3, D, dtype=torch.float64))
    out = graph(x, sigma, cond)
    assert out.dtype == torch.float64 and out.shape == x.shape


def test_freeze_propagates_to_children():
    graph, lin, _ = module_tree()
    graph.train()
    assert lin.lin.weight.requires_grad and lin.training
    assert graph.freeze() is graph
    assert not any(p.requires_grad for p in graph.parameters())
    assert not lin.lin.weight.requires_grad
    assert not any(m.training for m in graph.modules())
    assert not lin.drop.training


def test_plain_callables_get_wrapped():
    x, sigma, cond = inputs()
    for op in (
        Mix([text_field]),
        Scale(text_field, 1.0),
        Guidance(text_field, 1.0),
        Masked(text_field, text_field),
    ):
        assert all(isinstance(f, FunctionField) for f in op.fields)
    assert torch.equal(Scale(text_field, 1.0).fields[0](x, sigma, cond), text_field(x, sigma, cond))
    field = LinearField()
    assert as_field(field) is field
    assert Scale(field, 2.0).fields[0] is field
    # a plain nn.Module (not a ModuleField) is wrapped and stays a child module, so .to reaches it
    plain = PlainModule()
    scaled = Scale(plain, 2.0)
    assert isinstance(scaled.fields[0], FunctionField) and scaled.fields[0].fn is plain
    scaled.to(torch.float64)
    assert plain.w.dtype == torch.float64
    assert torch.equal(scaled(x, sigma, cond), 2.0 * x)
    with pytest.raises(TypeError):
        as_field(3.0)
    with pytest.raises(TypeError):
        Mix([text_field, "not a field"])
