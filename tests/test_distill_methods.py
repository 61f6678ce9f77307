"""The methods' losses on a fixed batch, recomputed from closed-form fields and independent full rollouts:
early-stopped rollouts, query states of every state source, loss weights, SFT, and sharding."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from fieldkit.analytic import GaussianMixtureData, GaussianMixtureField
from fieldkit.cond import Cond
from fieldkit.data import Batch, Shard
from fieldkit.distill.methods import DistillMethod, SFTMethod
from fieldkit.distill.queries import sample_indices
from fieldkit.errors import FieldkitError
from fieldkit.field import FunctionField, ModuleField, broadcast_sigma
from fieldkit.flow import euler_sample, sigma_schedule
from fieldkit.protocols import LossInputs
from fieldkit.training_params import DenseParams, DistillParams, OffPolicyParams, SFTParams

SHAPE = (1, 4, 4)


class Recorder(FunctionField):
    """Wraps a field and keeps the inputs of every call."""

    def __init__(self, fn) -> None:
        super().__init__(fn, name="recorder")
        self.xs: list[Tensor] = []
        self.sigmas: list[Tensor] = []
        self.conds: list[Cond] = []

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        self.xs.append(x.clone())
        self.sigmas.append(sigma.clone())
        self.conds.append(cond)
        return super().forward(x, sigma, cond)


class Linear(ModuleField):
    """``v = a x + b sigma + c label`` with scalar parameters: a trainable student."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.3))
        self.b = nn.Parameter(torch.tensor(-0.7))
        self.c = nn.Parameter(torch.tensor(0.2))

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        label = cond["label"].to(x).view(-1, 1, 1, 1)
        return self.a * x + self.b * broadcast_sigma(sigma, x) + self.c * label


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def setup(batch: int = 6, steps: int = 8, seed: int = 0):
    teacher = GaussianMixtureField.random(3, SHAPE, seed=0)
    data = GaussianMixtureData(teacher)
    return teacher, data.sample(batch, gen(100 + seed)), sigma_schedule(steps, 3.0)


def draws(steps: int, n: int, k: int, bias: str, seed: int, data_states: bool = False):
    """The method's randomness, redrawn independently: indices first, then noise, from one generator."""
    g = gen(seed)
    idx = sample_indices(steps, n, k, bias, g)
    noise = torch.randn((n, k if data_states else 1, *SHAPE), generator=g)
    return idx, noise


def gather(states: Tensor, idx: Tensor) -> Tensor:
    """``states[idx[b, k], b]`` of a full recorded rollout ``[N, B, ...]``, flattened to ``[B * K, ...]``."""
    rows = torch.arange(idx.shape[0]).unsqueeze(1).expand_as(idx)
    return states[idx, rows].flatten(0, 1)


def mse_rows(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).flatten(1).mean(1)


# -- early-stopped rollouts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bias", "k", "seed"), [("low", 1, 0), ("low", 3, 1), ("uniform", 2, 2), ("high", 1, 3)]
)
def test_rollout_stops_at_the_last_query_and_matches_a_full_rollout(counting, bias, k, seed):
    teacher, batch, sigmas = setup(seed=seed)
    steps, n = sigmas.numel() - 1, batch.cond.batch_size
    student = GaussianMixtureField.random(3, SHAPE, seed=7)
    policy, target = counting(student), Recorder(teacher)
    out = DistillMethod(DistillParams(query=bias, k=k)).loss(
        LossInputs(student, policy, target, batch, SHAPE, sigmas, gen(seed))
    )
    idx, noise = draws(steps, n, k, bias, seed)
    last = int(idx.max())
    assert out.rollout_nfe == last == policy.calls
    # One forward per Euler step, none past the last query; a sample leaves the batch after its own last one.
    row_last = idx.max(dim=1).values
    assert policy.batch_sizes == [int((row_last > i).sum()) for i in range(last)]
    assert sum(policy.batch_sizes) == int(row_last.sum())
    full = euler_sample(student, noise[:, 0], batch.cond, sigmas, record=True)
    assert full.nfe == steps
    x = gather(full.states, idx)
    (queried,) = target.xs  # the target is evaluated once, on all B * K query states together
    torch.testing.assert_close(queried, x)
    torch.testing.assert_close(target.sigmas[0], sigmas[idx].flatten())
    torch.testing.assert_close(out.query_sigmas, sigmas[idx].flatten())
    assert torch.equal(target.conds[0]["label"], batch.cond["label"].repeat_interleave(k))
    expected = mse_rows(
        student(x, sigmas[idx].flatten(), target.conds[0]), teacher(x, sigmas[idx].flatten(), target.conds[0])
    )
    torch.testing.assert_close(out.loss, expected.mean())


def test_query_of_state_zero_needs_no_student_call(counting):
    teacher, batch, sigmas = setup()
    policy = counting(GaussianMixtureField.random(3, SHAPE, seed=7))
    # One step: the only pre-step state is the noise itself.
    out = DistillMethod(DistillParams()).loss(
        LossInputs(policy, policy, teacher, batch, SHAPE, sigmas[[0, -1]], gen(0))
    )
    assert out.rollout_nfe == 0
    assert policy.calls == 1  # the loss forward only


@pytest.mark.parametrize(("reuse", "k"), [(3, 1), (2, 2)])
def test_reuse_serves_one_full_rollout_to_r_updates(counting, reuse, k):
    """``reuse: R``: one rollout to the last pre-step state every R updates of a route; each update queries
    it at freshly drawn indices, with the conditions it was rolled out for, whatever its own batch holds."""
    teacher, first, sigmas = setup(seed=1)
    _, other, _ = setup(seed=2)  # later updates bring another batch: the stored trajectory keeps its own
    steps, n = sigmas.numel() - 1, first.cond.batch_size
    student = GaussianMixtureField.random(3, SHAPE, seed=7)
    policy, target = counting(student), Recorder(teacher)
    method = DistillMethod(DistillParams(k=k, reuse=reuse))
    full = None
    for update in range(2 * reuse):
        batch = first if update < reuse else other
        calls = policy.calls
        out = method.loss(LossInputs(student, policy, target, batch, SHAPE, sigmas, gen(update)))
        idx, noise = draws(steps, n, k, "low", update)
        if update % reuse == 0:  # a fresh rollout: every pre-step state, all rows to the end
            assert out.rollout_nfe == steps - 1 == policy.calls - calls
            assert policy.batch_sizes[-(steps - 1) :] == [n] * (steps - 1)
            full = euler_sample(student, noise[:, 0], batch.cond, sigmas, record=True)
            rolled = batch
        else:
            assert out.rollout_nfe == 0 and policy.calls == calls
        torch.testing.assert_close(target.xs[-1], gather(full.states, idx))
        torch.testing.assert_close(out.query_sigmas, sigmas[idx].flatten())
        assert torch.equal(target.conds[-1]["label"], rolled.cond["label"].repeat_interleave(k))


def test_reused_states_train_a_student_whose_conditions_enter_autograd():
    """With K > 1 the stored trajectory's conditions are repeated outside inference mode, so a student that
    saves a condition tensor for backward (a float feature times a parameter) trains on reused updates."""

    class FeatureStudent(ModuleField):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Parameter(torch.tensor(0.3))

        def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
            return x + (self.c * cond["feature"]).view(-1, 1, 1, 1)

    teacher, batch, sigmas = setup()
    cond = Cond(label=batch.cond["label"], feature=torch.randn(batch.cond.batch_size, generator=gen(5)))
    student, method = FeatureStudent(), DistillMethod(DistillParams(k=2, reuse=2))
    for update in range(3):
        student.c.grad = None
        out = method.loss(
            LossInputs(student, student, teacher, Batch(cond, None), SHAPE, sigmas, gen(update))
        )
        out.loss.backward()
        assert out.rollout_nfe == (0 if update % 2 else sigmas.numel() - 2)
        assert student.c.grad is not None and torch.isfinite(student.c.grad)


def test_reuse_needs_rollout_states():
    with pytest.raises(ValueError, match="reuse > 1 reuses rollout states"):
        OffPolicyParams(reuse=2)
    assert DistillParams(states="teacher", reuse=2).reuse == 2


# -- state sources and weights ------------------------------------------------------------------------


def test_teacher_states_come_from_the_target_rollout():
    teacher, batch, sigmas = setup(seed=4)
    target = Recorder(teacher)
    student = GaussianMixtureField.random(3, SHAPE, seed=7)
    out = DistillMethod(DistillParams(states="teacher", query="uniform", k=2)).loss(
        LossInputs(student, student, target, batch, SHAPE, sigmas, gen(4))
    )
    idx, noise = draws(sigmas.numel() - 1, 6, 2, "uniform", 4)
    assert out.rollout_nfe == int(idx.max())
    assert len(target.xs) == out.rollout_nfe + 1  # the rollout, then the query
    full = euler_sample(teacher, noise[:, 0], batch.cond, sigmas, record=True)
    torch.testing.assert_close(target.xs[-1], gather(full.states, idx))


def test_offpolicy_states_are_forward_noised_data():
    teacher, batch, sigmas = setup(seed=5)
    target = Recorder(teacher)
    student = GaussianMixtureField.random(3, SHAPE, seed=7)
    out = DistillMethod(OffPolicyParams(k=3)).loss(
        LossInputs(student, student, target, batch, SHAPE, sigmas, gen(5))
    )
    idx, noise = draws(sigmas.numel() - 1, 6, 3, "low", 5, data_states=True)
    assert out.rollout_nfe == 0 and len(target.xs) == 1
    s = sigmas[idx].view(6, 3, 1, 1, 1)
    expected = ((1 - s) * batch.target.unsqueeze(1) + s * noise).flatten(0, 1)
    torch.testing.assert_close(target.xs[0], expected)


def test_dense_uses_every_state_with_dt2_weights():
    teacher, batch, sigmas = setup(seed=6)
    steps = sigmas.numel() - 1
    student = GaussianMixtureField.random(3, SHAPE, seed=7)
    method = DistillMethod(DenseParams())
    assert method.params.query == "all" and method.params.weighting == "dt2"
    out = method.loss(LossInputs(student, student, teacher, batch, SHAPE, sigmas, gen(6)))
    assert out.rollout_nfe == steps - 1  # the last pre-step state; the clean end is never queried
    # Weights: DiffusionOPD's dt_i^2 / 2 for the step taken from state i, normalised to mean one.
    dt = (sigmas[:-1] - sigmas[1:]).double()
    w = (dt**2 / 2) / (dt**2 / 2).mean()
    idx = torch.arange(steps).expand(6, steps)
    torch.testing.assert_close(method.weights(sigmas, idx).double(), w.repeat(6))
    assert not torch.allclose(w, torch.ones_like(w))  # shift 3 makes the steps unequal
    _, noise = draws(steps, 6, 1, "all", 6)
    full = euler_sample(student, noise[:, 0], batch.cond, sigmas, record=True)
    x, s = gather(full.states, idx), sigmas[idx].flatten()
    cond = batch.cond.repeat_interleave(steps)
    per = mse_rows(student(x, s, cond), teacher(x, s, cond)).double()
    torch.testing.assert_close(out.loss.double(), (w.repeat(6) * per).mean(), rtol=1e-5, atol=1e-7)


def test_timestep_weighting_is_sigma_squared():
    teacher, batch, sigmas = setup(seed=7)
    student = GaussianMixtureField.random(3, SHAPE, seed=7)
    target = Recorder(teacher)
    params = DistillParams(weighting="timestep", query="uniform", k=2)
    out = DistillMethod(params).loss(LossInputs(student, student, target, batch, SHAPE, sigmas, gen(7)))
    x, s, cond = target.xs[0], target.sigmas[0], target.conds[0]
    per = mse_rows(student(x, s, cond), teacher(x, s, cond))
    torch.testing.assert_close(out.loss, (s**2 * per).mean())
    plain = DistillMethod(DistillParams(query="uniform", k=2)).loss(
        LossInputs(student, student, teacher, batch, SHAPE, sigmas, gen(7))
    )
    torch.testing.assert_close(plain.loss, per.mean())


def test_gradient_flows_through_the_loss_forward_only():
    teacher, batch, sigmas = setup(seed=8)
    student, target = Linear(), Recorder(teacher)
    out = DistillMethod(DistillParams(k=2)).loss(
        LossInputs(student, student, target, batch, SHAPE, sigmas, gen(8))
    )
    got = torch.autograd.grad(out.loss, list(student.parameters()))
    # (the recorded inputs were made under inference mode; clones outside it are ordinary tensors)
    x, s, cond = target.xs[0].clone(), target.sigmas[0].clone(), target.conds[0]
    u = teacher(x, s, cond)
    want = torch.autograd.grad(
        mse_rows(student(x.detach(), s, cond), u.detach()).mean(), list(student.parameters())
    )
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_missing_targets_and_fields_are_clear_errors():
    teacher, batch, sigmas = setup()
    conds_only = Batch(batch.cond)
    with pytest.raises(FieldkitError, match="clean target images") as err:
        DistillMethod(OffPolicyParams()).loss(
            LossInputs(teacher, teacher, teacher, conds_only, SHAPE, sigmas, gen(0))
        )
    assert "states: student" in (err.value.hint or "")
    with pytest.raises(FieldkitError, match="clean target images"):
        SFTMethod(SFTParams()).loss(LossInputs(teacher, teacher, None, conds_only, SHAPE, sigmas, gen(0)))
    with pytest.raises(FieldkitError, match="no field to distill"):
        DistillMethod(DistillParams()).loss(LossInputs(teacher, teacher, None, batch, SHAPE, sigmas, gen(0)))


# -- SFT: plain flow matching ------------------------------------------------------------------------------


@pytest.mark.parametrize("timesteps", ["uniform", "logit_normal", "schedule"])
@pytest.mark.parametrize("weighting", ["none", "timestep"])
def test_sft_loss_is_the_flow_matching_formula(timesteps, weighting):
    _, batch, sigmas = setup(batch=8, seed=9)
    student = Linear()
    out = SFTMethod(SFTParams(timesteps=timesteps, weighting=weighting)).loss(
        LossInputs(student, student, None, batch, SHAPE, sigmas, gen(9))
    )
    g = gen(9)
    if timesteps == "uniform":
        sigma = torch.rand(8, generator=g)
    elif timesteps == "logit_normal":
        sigma = torch.sigmoid(torch.randn(8, generator=g))
    else:
        sigma = sigmas[torch.randint(sigmas.numel() - 1, (8,), generator=g)]
        assert bool((sigma > 0).all())
    eps = torch.randn((8, *SHAPE), generator=g)
    x0, s = batch.target, sigma.view(-1, 1, 1, 1)
    x = (1 - s) * x0 + s * eps
    per = mse_rows(student(x, sigma, batch.cond), eps - x0)
    if weighting == "timestep":
        per = per * sigma**2
    torch.testing.assert_close(out.loss, per.mean())
    torch.testing.assert_close(out.query_sigmas, sigma)
    assert out.rollout_nfe == 0 and out.loss.requires_grad


# -- sharding: W processes with batch b compute what one process computes with W b ------------------------


@pytest.mark.parametrize(
    "method",
    [
        DistillMethod(DistillParams(k=2)),
        DistillMethod(OffPolicyParams()),
        DistillMethod(DenseParams()),
        DistillMethod(DistillParams(states="teacher", weighting="timestep")),
        SFTMethod(SFTParams()),
    ],
    ids=["danceopd", "offpolicy", "dense", "teacher-timestep", "sft"],
)
def test_shards_average_to_the_global_batch_loss(method):
    teacher, batch, sigmas = setup(batch=8, seed=10)
    student = Linear()
    full = method.loss(LossInputs(student, student, teacher, batch, SHAPE, sigmas, gen(10)))
    halves = [
        method.loss(LossInputs(student, student, teacher, batch, SHAPE, sigmas, gen(10), Shard(r, 2)))
        for r in (0, 1)
    ]
    torch.testing.assert_close((halves[0].loss + halves[1].loss) / 2, full.loss)
    torch.testing.assert_close(torch.cat([h.query_sigmas for h in halves]), full.query_sigmas)
    assert max(h.rollout_nfe for h in halves) == full.rollout_nfe
    with pytest.raises(ValueError, match="does not split"):
        method.loss(LossInputs(student, student, teacher, batch, SHAPE, sigmas, gen(10), Shard(0, 3)))
