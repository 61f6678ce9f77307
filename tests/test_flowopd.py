"""Flow-OPD: the SDE step, its log-probability and transition KL in closed form, group advantages, the loss,
and a run from YAML."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import Tensor

from fieldkit.analytic import gaussian_velocity
from fieldkit.cli import cli
from fieldkit.cond import Cond
from fieldkit.data import Batch
from fieldkit.distill.flowopd import (
    FlowOPDMethod,
    group_advantages,
    log_prob,
    noise_scale,
    ppo_loss,
    release_advantages,
    sde_step,
)
from fieldkit.errors import FieldkitError
from fieldkit.field import FunctionField
from fieldkit.flow import sigma_schedule
from fieldkit.protocols import LossInputs
from fieldkit.training_params import FlowOPDParams


def test_the_step_is_euler_plus_a_drift_correction_and_noise() -> None:
    torch.manual_seed(0)
    x, v = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    sigma, nxt = torch.full((4,), 0.6), torch.full((4,), 0.5)
    step = sde_step(x, v, sigma, nxt, eta=0.7, sigma_below_one=0.99)
    s = 0.7 * math.sqrt(0.6 / 0.4)
    expected = x - 0.1 * (v + s**2 / (2 * 0.6) * (x + 0.4 * v))
    torch.testing.assert_close(step.mean, expected)
    torch.testing.assert_close(step.std.flatten(), torch.full((4,), s * math.sqrt(0.1)))
    # eta -> 0: the Euler step of the flow, with vanishing noise.
    tiny = sde_step(x, v, sigma, nxt, eta=1e-6, sigma_below_one=0.99)
    torch.testing.assert_close(tiny.mean, x - 0.1 * v)


def test_the_noise_scale_is_finite_at_pure_noise() -> None:
    s = noise_scale(torch.tensor([1.0, 0.5]), eta=0.7, sigma_below_one=0.9)
    torch.testing.assert_close(s, torch.tensor([0.7 * math.sqrt(1 / 0.1), 0.7]))


def test_the_sde_keeps_the_marginals_of_the_exact_velocity() -> None:
    """Data N(m, s^2): SDE rollouts of the exact velocity end on the data distribution."""
    mean, std, n = torch.tensor(1.5), 0.5, 40000
    sigmas = sigma_schedule(400, 1.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((n, 1), generator=gen)
    for i in range(sigmas.numel() - 1):
        sigma, nxt = sigmas[i].expand(n), sigmas[i + 1].expand(n)
        step = sde_step(x, gaussian_velocity(x, sigma, mean, std), sigma, nxt, 0.7, float(sigmas[1]))
        x = step.mean + step.std * torch.randn(x.shape, generator=gen)
    assert float(x.mean()) == pytest.approx(1.5, abs=0.02)
    assert float(x.std()) == pytest.approx(0.5, abs=0.02)


def test_the_reward_is_an_unbiased_estimate_of_minus_the_transition_kl() -> None:
    """Teacher velocity v, student v + c: both steps share their std, so KL = |mu_s - mu_t|^2 / (2 std^2) =
    |dt (1 + s^2 (1 - sigma) / (2 sigma)) c|^2 / (2 s^2 |dt|); the reward log p_teacher - log p_student of
    the student's own steps averages to -KL (Monte Carlo)."""
    torch.manual_seed(0)
    c, sigma0, sigma1, eta = 0.3, 0.7, 0.6, 0.7
    x, v = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    sigma, nxt = torch.full((1,), sigma0), torch.full((1,), sigma1)
    student = sde_step(x, v + c, sigma, nxt, eta, 0.99)
    teacher = sde_step(x, v, sigma, nxt, eta, 0.99)
    s2, dt = eta**2 * sigma0 / (1 - sigma0), sigma1 - sigma0
    closed = (dt * (1 + s2 * (1 - sigma0) / (2 * sigma0)) * c) ** 2 / (2 * s2 * abs(dt))
    means = ((student.mean - teacher.mean) ** 2 / (2 * student.std**2)).mean()
    assert float(means) == pytest.approx(closed, rel=1e-5)
    gen = torch.Generator().manual_seed(1)
    draws = student.mean + student.std * torch.randn((20000, 1, 4, 4), generator=gen)
    big = [type(student)(t.mean.expand_as(draws), t.std) for t in (student, teacher)]
    monte_carlo = float((log_prob(draws, big[1]) - log_prob(draws, big[0])).mean())
    assert monte_carlo == pytest.approx(-closed, rel=0.05)


def test_group_advantages() -> None:
    returns = torch.tensor([[1.0, 0.0], [3.0, 0.0], [10.0, 5.0], [-10.0, 5.0]])
    adv = group_advantages(returns, group=2, clip=0.5)
    torch.testing.assert_close(adv.reshape(2, 2, 2).mean(1), torch.zeros(2, 2))
    assert adv.abs().max() <= 0.5
    assert adv[0, 0] < 0 < adv[1, 0]  # the better return of its group gets the positive advantage
    torch.testing.assert_close(adv[:, 1], torch.zeros(4))  # equal returns: no advantage


def test_the_release_advantage_has_zero_expected_policy_gradient() -> None:
    """Closed form. A student ``w v`` against its teacher ``v`` at fixed pre-step states: the release
    advantage ``-KL(mu_s, mu_t)`` does not depend on the step drawn, and ``grad_w log p(x' | x) = e / std *
    d mu / dw`` is odd in the step's standard normal draw ``e``, so the PPO loss's gradient over ``e`` and
    ``-e`` cancels exactly: ``E[A grad log p] = 0``. The log-ratio reward's does not cancel: its
    ``e``-even part is ``(w - 1) (dt c)^2 (e . v)^2 / std^2 >= 0``, moving ``w`` toward the teacher's 1."""
    torch.manual_seed(0)
    x = torch.randn(64, 1, 2, 2)
    sigma, nxt = torch.full((64,), 0.7), torch.full((64,), 0.6)
    v = gaussian_velocity(x, sigma, torch.tensor(0.5), 0.3)
    e = torch.randn_like(x)

    def gradient(reward: str, noise: Tensor, start: float) -> float:
        w = torch.nn.Parameter(torch.tensor(start))
        new, teacher = sde_step(x, w * v, sigma, nxt, 0.7, 0.99), sde_step(x, v, sigma, nxt, 0.7, 0.99)
        reached = (new.mean + new.std * noise).detach()
        old = log_prob(reached, new).detach()
        if reward == "release":
            advantages = release_advantages(new, teacher, clip=5.0)
        else:
            advantages = log_prob(reached, teacher) - old
        ppo_loss(log_prob(reached, new), old, advantages, 1e-4).backward()
        assert w.grad is not None
        return float(w.grad)

    for start in (1.5, 0.6):
        release = gradient("release", e, start) + gradient("release", -e, start)
        assert abs(release) <= 1e-6 * abs(gradient("release", e, start))
        logratio = gradient("logratio", e, start) + gradient("logratio", -e, start)
        assert logratio * (start - 1.0) > 0


def _inputs(student, teacher, n: int = 8, seed: int = 0) -> LossInputs:
    cond = Cond(label=torch.arange(n) % 2)
    return LossInputs(
        student=student,
        policy=student,
        target=teacher,
        batch=Batch(cond, None),
        shape=(1, 2, 2),
        sigmas=sigma_schedule(6, 3.0),
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("reward", ["logratio", "release"])
def test_a_student_equal_to_its_teacher_has_no_reward_and_no_gradient(reward: str) -> None:
    mean = torch.tensor(0.5)
    weight = torch.nn.Parameter(torch.ones(()))

    def teacher(x, sigma, cond):
        return gaussian_velocity(x, sigma, mean, 0.3)

    def student(x, sigma, cond):
        return weight * gaussian_velocity(x, sigma, mean, 0.3)

    method = FlowOPDMethod(FlowOPDParams(group=4, reward=reward))
    out = method.loss(_inputs(FunctionField(student), FunctionField(teacher)))
    out.loss.backward()
    assert float(out.loss.detach()) == 0.0
    assert float(weight.grad) == 0.0
    assert out.rollout_nfe == 6 and out.rollout_samples == 8 * 6


def test_a_student_unlike_its_teacher_gets_a_gradient() -> None:
    mean = torch.tensor(0.5)
    weight = torch.nn.Parameter(torch.tensor(1.5))

    def teacher(x, sigma, cond):
        return gaussian_velocity(x, sigma, mean, 0.3)

    def student(x, sigma, cond):
        return weight * gaussian_velocity(x, sigma, mean, 0.3)

    out = FlowOPDMethod(FlowOPDParams(group=4)).loss(_inputs(FunctionField(student), FunctionField(teacher)))
    out.loss.backward()
    assert math.isfinite(float(out.loss.detach())) and float(weight.grad) != 0.0


@pytest.mark.parametrize("start", [1.6, 0.4])
def test_the_policy_gradient_moves_the_student_toward_its_teacher(start: float) -> None:
    """A student ``w v_teacher``: over many rollouts the loss's gradient in ``w`` points away from 1 (a
    descent step moves ``w`` toward the teacher's 1), on every seed."""
    mean = torch.tensor(0.5)

    def teacher(x, sigma, cond):
        return gaussian_velocity(x, sigma, mean, 0.3)

    for seed in range(3):
        weight = torch.nn.Parameter(torch.tensor(start))

        def student(x, sigma, cond, weight=weight):
            return weight * gaussian_velocity(x, sigma, mean, 0.3)

        method = FlowOPDMethod(FlowOPDParams(group=4))
        method.loss(_inputs(FunctionField(student), FunctionField(teacher), n=256, seed=seed)).loss.backward()
        assert float(weight.grad) * (start - 1.0) > 0, seed


def test_a_batch_that_does_not_hold_whole_groups_is_refused() -> None:
    def field(x, sigma, cond):
        return x

    with pytest.raises(FieldkitError, match=r"multiple of method\.group"):
        FlowOPDMethod(FlowOPDParams(group=3)).loss(_inputs(FunctionField(field), FunctionField(field)))


GRAPH = """\
fields:
  mixture: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4], std: 0.2}
  init: {type: fieldkit.mmdit, config: {in_channels: 1, sample_size: [4, 4], patch_size: 2, hidden: 16,
         depth: 1, heads: 2, num_classes: 3}}
routes:
  t2i: {field: mixture, data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4], std: 0.2}}
student: {init: init}
method: {type: flowopd, eta: 0.7, group: 4, adv_clip: 5, ratio_clip: 0.0001}
flow: {steps: 4}
run: {steps: 2, batch_size: 8, lr: 1.0e-3, device: cpu}
"""


def test_flowopd_runs_from_yaml(tmp_path: Path) -> None:
    graph = tmp_path / "graph.yaml"
    graph.write_text(GRAPH)
    result = CliRunner().invoke(cli, ["distill", str(graph), "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "student" / "model.safetensors").is_file()
    bad = CliRunner().invoke(
        cli,
        ["distill", str(graph), "--out", str(tmp_path / "bad"), "--set", "method.group=3", "--no-progress"],
    )
    assert bad.exit_code == 2 and "multiple of method.group" in bad.output
    # The authors' variant (closed-form KL advantage, groups of 16, no normalisation) from the same YAML.
    release = CliRunner().invoke(
        cli,
        [
            *("distill", str(graph), "--out", str(tmp_path / "release"), "--no-progress"),
            *("--set", "method={type: flowopd, reward: release, group: 8}"),
        ],
    )
    assert release.exit_code == 0, release.output
    assert (tmp_path / "release" / "student" / "model.safetensors").is_file()
