"""Flow-OPD (Fang et al., arXiv 2605.08063): on-policy distillation by a clipped policy gradient over SDE
rollouts, the paper's second on-policy baseline (``method: {type: flowopd}``).

The student rolls out the Flow-GRPO SDE of its velocity ``v`` with noise level ``eta``; with
``dt = sigma' - sigma < 0`` and ``s = eta sqrt(sigma / (1 - sigma))`` one step is the Gaussian

    x' ~ N(mu(x, v), s^2 |dt| I),    mu(x, v) = x + dt [v + s^2 / (2 sigma) (x + (1 - sigma) v)],

which keeps the flow's marginals for the exact velocity and is the Euler step at ``eta = 0``. Each
transition ``x -> x'`` gets its own advantage (no reward-to-go: discount 0), by ``reward``:

- ``logratio`` (fieldkit's, the default): the log-ratio of the teacher's and the student's step densities at
  the state it reached, ``r = log N(x'; mu(x, v_teacher), s^2 |dt|) - log N(x'; mu(x, v_student), s^2
  |dt|)`` (mean over elements), whose expectation over the student's step is ``-KL(student step || teacher
  step) = -|mu_s - mu_t|^2 / (2 s^2 |dt|)``, and whose policy gradient in expectation is the KL's (on-policy
  distillation's per-token reward); ``group`` rollouts share each condition, ``A = clip((r - mean_group) /
  std_group, +-adv_clip)`` per step.
- ``release`` (the authors' release, as the paper ran it): that closed form itself, ``A = clip(-|mu_s -
  mu_t|^2 / (2 s^2 |dt|), +-adv_clip)`` at the pre-step state, with no group normalisation. It does not
  depend on the step taken from ``x``, so ``E[A grad log p(x' | x)] = A E[grad log p] = 0``: its policy
  gradient is zero in expectation, and only the finite sample (and the clipping) moves the student.

The loss is PPO's ``-mean min(rho A, clip(rho, 1 - ratio_clip, 1 + ratio_clip) A)`` over every transition,
``rho = p_theta(x' | x) / p_rollout(x' | x)`` (1 at the rollout's weights: one update per rollout).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from fieldkit.cond import Cond
from fieldkit.errors import FieldkitError
from fieldkit.field import VelocityField, broadcast_sigma
from fieldkit.models.lora import merged_lora
from fieldkit.protocols import LossInputs, LossOutput
from fieldkit.training_params import FlowOPDParams


@dataclass(frozen=True)
class SDEStep:
    """The SDE transition at one schedule step: ``x' ~ N(mean, std^2 I)``."""

    mean: Tensor
    std: Tensor  # [B, 1, ..., 1]


def noise_scale(sigma: Tensor, eta: float, sigma_below_one: float) -> Tensor:
    """``s = eta sqrt(sigma / (1 - sigma))``, with ``sigma = 1`` read as ``sigma_below_one`` (finite)."""
    safe = torch.where(sigma >= 1, torch.full_like(sigma, sigma_below_one), sigma)
    return eta * torch.sqrt(sigma / (1 - safe))


def sde_step(
    x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor, eta: float, sigma_below_one: float
) -> SDEStep:
    """``mu = x + dt [v + s^2 / (2 sigma) (x + (1 - sigma) v)]`` and ``std = s sqrt(|dt|)`` (per sample)."""
    sig, nxt = broadcast_sigma(sigma, x), broadcast_sigma(sigma_next, x)
    dt = nxt - sig
    s = noise_scale(sig, eta, sigma_below_one)
    mean = x + dt * (v + s**2 / (2 * sig) * (x + (1 - sig) * v))
    return SDEStep(mean, s * torch.sqrt(-dt))


def log_prob(x_next: Tensor, step: SDEStep) -> Tensor:
    """``log N(x_next; mean, std^2 I)`` per sample, averaged over elements ``[B]``."""
    z = (x_next.float() - step.mean.float()) / step.std.float()
    return (-0.5 * z**2 - torch.log(step.std.float()) - 0.5 * math.log(2 * math.pi)).flatten(1).mean(1)


def release_advantages(student: SDEStep, teacher: SDEStep, clip: float) -> Tensor:
    """``clip(-|mu_s - mu_t|^2 / (2 std^2), +-clip)`` per transition (mean over elements) ``[B]``: the
    closed-form transition KL as the advantage, as the authors' release has it (kl_scale -1, detached)."""
    gap = (student.mean.float() - teacher.mean.float()) ** 2 / (2 * student.std.float() ** 2)
    kl = gap.flatten(1).mean(1)
    return (-kl).clamp(-clip, clip).detach()


def group_advantages(returns: Tensor, group: int, clip: float) -> Tensor:
    """``clip((R - mean_g R) / (std_g R + 1e-6), +-clip)`` within each block of ``group`` consecutive rows
    (same condition), separately at every step; ``returns`` is ``[B, N]``."""
    b, n = returns.shape
    grouped = returns.reshape(b // group, group, n)
    centred = grouped - grouped.mean(1, keepdim=True)
    scaled = centred / (grouped.std(1, keepdim=True) + 1e-6)
    return scaled.clamp(-clip, clip).reshape(b, n)


def ppo_loss(logp: Tensor, old: Tensor, advantages: Tensor, ratio_clip: float) -> Tensor:
    """``-mean min(rho A, clip(rho, 1 +- ratio_clip) A)`` with ``rho = exp(logp - old)`` per transition."""
    ratio = torch.exp(logp - old)
    clipped = ratio.clamp(1 - ratio_clip, 1 + ratio_clip)
    return -torch.minimum(ratio * advantages, clipped * advantages).mean()


class FlowOPDMethod:
    """Policy-gradient distillation over the student's own SDE rollouts (see the module docstring)."""

    def __init__(self, params: FlowOPDParams) -> None:
        self.params = params

    def rollout_steps(self, default: int) -> int:
        return self.params.rollout_steps or default

    def _rollout(
        self, policy: VelocityField, noise: Tensor, step_noise: Tensor, cond: Cond, sigmas: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Every pre-step state ``[B, N, ...]`` and the state each SDE step reached ``[B, N, ...]``;
        ``step_noise`` ``[N, B, ...]`` holds each step's standard normal draw."""
        p, x, below = self.params, noise, float(sigmas[1])
        states, reached = [], []
        with merged_lora(policy):  # a LoRA student rolls out with its adapters merged
            for i in range(sigmas.numel() - 1):
                sigma, nxt = sigmas[i].expand(x.shape[0]), sigmas[i + 1].expand(x.shape[0])
                step = sde_step(x, policy(x, sigma, cond), sigma, nxt, p.eta, below)
                states.append(x)
                x = step.mean + step.std * step_noise[i]
                reached.append(x)
        return torch.stack(states, 1), torch.stack(reached, 1)

    def loss(self, inputs: LossInputs) -> LossOutput:
        p, sigmas, target = self.params, inputs.sigmas, inputs.target
        if target is None:
            raise FieldkitError("this route has no field to distill", hint="give the route a 'field'")
        n, steps = inputs.batch.cond.batch_size or 0, sigmas.numel() - 1
        per = n // inputs.shard.world
        if n % p.group or per % p.group:
            raise FieldkitError(
                f"flowopd needs whole groups of {p.group} rollouts per process; a process gets {per} of {n}",
                hint="make run.batch_size a multiple of method.group",
            )
        # Each of the first n / group conditions is rolled out `group` times (the global batch, then sharded).
        batch = inputs.batch
        cond = batch.cond.index(slice(0, n // p.group)).repeat_interleave(p.group)
        gen = inputs.generator
        noise = torch.randn((n, *inputs.shape), generator=gen)
        step_noise = torch.randn((steps, n, *inputs.shape), generator=gen)
        rows, device = inputs.shard.rows(n), sigmas.device
        cond, noise, step_noise = (
            cond.index(rows).to(device),
            noise[rows].to(device),
            step_noise[:, rows].to(device),
        )
        b = noise.shape[0]
        # Tensors that will meet autograd are made outside inference mode.
        sigma, sigma_next = sigmas[:-1].repeat(b), sigmas[1:].repeat(b)
        cond_all, below = cond.repeat_interleave(steps), float(sigmas[1])
        t0 = time.perf_counter()
        with torch.inference_mode():
            states, reached = self._rollout(inputs.policy, noise, step_noise, cond, sigmas)
            x = states.flatten(0, 1)
            t1 = time.perf_counter()
            v_teacher = target(x, sigma, cond_all)
            t2 = time.perf_counter()
        x, v_teacher, reached = x.clone(), v_teacher.clone(), reached.flatten(0, 1).clone()
        t3 = time.perf_counter()
        v_student = inputs.student(x, sigma, cond_all)
        new = sde_step(x, v_student, sigma, sigma_next, p.eta, below)
        with torch.no_grad():
            teacher = sde_step(x, v_teacher, sigma, sigma_next, p.eta, below)
            old = log_prob(reached, new)  # the rollout's weights are these weights: rho = 1 at this update
            if p.reward == "release":
                advantages = release_advantages(new, teacher, p.adv_clip)
            else:
                rewards = (log_prob(reached, teacher) - old).reshape(b, steps)
                advantages = group_advantages(rewards, p.group, p.adv_clip).flatten()
        loss = ppo_loss(log_prob(reached, new), old, advantages, p.ratio_clip)
        timings = {"rollout": t1 - t0, "teacher": t2 - t1, "student_forward": time.perf_counter() - t3}
        return LossOutput(loss, steps, b * steps, sigma.detach(), timings)
