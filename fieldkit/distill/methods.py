"""Methods: how query states are chosen and the loss is formed. Every baseline is a setting of one model.

``danceopd``: states from the current student's own rollout, K low-noise queries, velocity MSE.
``offpolicy``: data forward-noised to the query sigma. ``dense``: every rollout state, ``dt^2 / 2`` weights
(DiffusionOPD-style). ``sft``: plain flow matching on data (teacher training and the joint-training baseline).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from fieldkit.cond import Cond
from fieldkit.data import Batch
from fieldkit.distill.queries import sample_indices
from fieldkit.errors import FieldkitError
from fieldkit.field import VelocityField
from fieldkit.flow import interpolate, rollout_states, target_velocity
from fieldkit.models.lora import merged_lora
from fieldkit.protocols import LossInputs, LossOutput
from fieldkit.training_params import DistillParams, SFTParams


@dataclass(frozen=True)
class QueryStates:
    """Detached query states ``x`` ``[B * K, ...]`` at ``sigma`` ``[B * K]`` with their conditions, the
    schedule indices ``index`` ``[B, K]`` they sit at, and what producing them cost."""

    x: Tensor
    sigma: Tensor
    cond: Cond
    index: Tensor
    rollout_nfe: int = 0
    rollout_samples: int = 0


def _per_sample_mse(pred: Tensor, target: Tensor) -> Tensor:
    """``mean over elements of (pred - target)^2`` per sample, computed in fp32."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


def _require_targets(batch: Batch, what: str) -> Tensor:
    if batch.target is None:
        raise FieldkitError(
            f"{what} needs clean target images, but this route's data bucket yields conditions only",
            hint="use a data bucket with targets, or the on-policy method (states: student)",
        )
    return batch.target


@dataclass
class Trajectory:
    """Every pre-step state ``[B, N, ...]`` of one rollout (this process's rows), the batch it was rolled out
    for, and how many more updates it serves (``method.reuse``)."""

    states: Tensor
    batch: Batch
    left: int


def _query_cond(batch: Batch, k: int) -> Cond:
    """The conditions of ``k`` queries per sample, ``[B * K]``, in the order of the flattened states."""
    return batch.cond if k == 1 else batch.cond.repeat_interleave(k)


class DistillMethod:
    """``L = E || v_student(sg(x_i), sigma_i, c) - v_route(sg(x_i), sigma_i, c) ||^2`` over query states."""

    def __init__(self, params: DistillParams) -> None:
        self.params = params
        self.trajectories: dict[int, Trajectory] = {}  # per route field, while ``reuse`` > 1

    def rollout_steps(self, default: int) -> int:
        return self.params.rollout_steps or default

    def weights(self, sigmas: Tensor, idx: Tensor) -> Tensor | None:
        """Per-query loss weights ``[B * K]`` (None: plain mean)."""
        mode = self.params.weighting
        if mode == "none":
            return None
        if mode == "timestep":
            return sigmas[idx].flatten().pow(2)
        dt2 = (sigmas[:-1] - sigmas[1:]).pow(2) / 2
        return (dt2 / dt2.mean())[idx].flatten()

    def query_states(self, inputs: LossInputs) -> QueryStates:
        """This shard's query states, chosen by ``states`` (the student's or the teacher's rollout, or data
        forward-noised), at indices drawn by ``query`` and ``k``. The states are inference tensors."""
        p, sigmas, generator = self.params, inputs.sigmas, inputs.generator
        steps = sigmas.numel() - 1
        n = inputs.batch.cond.batch_size or 0
        # Randomness is drawn for the global batch on every process, then sharded (see Shard).
        idx = sample_indices(steps, n, p.k, p.query, generator)
        k = idx.shape[1]
        noise = torch.randn((n, k if p.states == "data" else 1, *inputs.shape), generator=generator)
        rows = inputs.shard.rows(n)
        # The rollout plans its early stop from the indices on the host: keep them there too (no device sync).
        batch, plan = inputs.shard.take(inputs.batch), idx[rows]
        # FSDP: every process rolls out as long as the global batch's longest row (same number of forwards)
        at_least = int(idx.max()) if inputs.shard.lockstep and idx.numel() else 0
        idx, noise = plan.to(sigmas.device), noise[rows].to(sigmas.device)
        # Tensors that will meet autograd are made outside inference mode.
        sigma = sigmas[idx].flatten()
        cond = _query_cond(batch, k)
        with torch.inference_mode():
            if p.states == "data":
                x0 = _require_targets(batch, "off-policy states").repeat_interleave(k, 0)
                return QueryStates(interpolate(x0, noise.flatten(0, 1), sigma), sigma, cond, idx)
            roller = inputs.policy if p.states == "student" else inputs.target
            if roller is None:
                raise FieldkitError("this route has no field to roll out", hint="give the route a 'field'")
            # A LoRA student rolls out with its adapters merged: each forward is a plain one.
            with merged_lora(inputs.policy) if p.states == "student" else contextlib.nullcontext():
                if p.reuse > 1:
                    states, nfe, samples, rolled = self._reused_states(
                        inputs, roller, noise[:, 0], batch, plan
                    )
                else:
                    states, nfe = rollout_states(roller, noise[:, 0], batch.cond, sigmas, plan, at_least)
                    samples, rolled = int(plan.max(dim=1).values.sum()), batch
        if rolled is not batch:  # a stored trajectory's conditions (also made outside inference mode)
            cond = _query_cond(rolled, k)
        return QueryStates(states.flatten(0, 1), sigma, cond, idx, nfe, samples)

    def _reused_states(
        self, inputs: LossInputs, roller: VelocityField, noise: Tensor, batch: Batch, plan: Tensor
    ) -> tuple[Tensor, int, int, Batch]:
        """The states ``[B, K, ...]`` at ``plan`` of the route's stored trajectory, rolled out (to its last
        pre-step state) when the route has none or it has served ``reuse`` updates, with the NFEs and samples
        that cost and the batch it was rolled out for (its conditions go with the states, whatever this
        update's batch holds)."""
        key = id(inputs.target)
        trajectory = self.trajectories.get(key)
        nfe = samples = 0
        if trajectory is None or trajectory.left == 0 or len(trajectory.states) != len(plan):
            steps = inputs.sigmas.numel() - 1
            every = torch.arange(steps).expand(len(plan), steps)
            states, nfe = rollout_states(roller, noise, batch.cond, inputs.sigmas, every)
            samples = len(plan) * (steps - 1)
            trajectory = self.trajectories[key] = Trajectory(states, batch, self.params.reuse)
        trajectory.left -= 1
        device = trajectory.states.device
        rows = torch.arange(len(plan), device=device)[:, None]
        return trajectory.states[rows, plan.to(device)], nfe, samples, trajectory.batch

    def loss(self, inputs: LossInputs) -> LossOutput:
        """The route field's velocity at the query states is the target of the student's."""
        target = inputs.target
        if target is None:
            raise FieldkitError("this route has no field to distill", hint="give the route a 'field'")
        t0 = time.perf_counter()
        q = self.query_states(inputs)
        t1 = time.perf_counter()
        with torch.inference_mode():
            u = target(q.x, q.sigma, q.cond)
        t2 = time.perf_counter()
        # Inference tensors cannot enter autograd; one copy makes them ordinary, detached tensors.
        x, u = q.x.clone(), u.clone()
        t3 = time.perf_counter()
        per_sample = _per_sample_mse(inputs.student(x, q.sigma, q.cond), u)
        timings = {"rollout": t1 - t0, "teacher": t2 - t1, "student_forward": time.perf_counter() - t3}
        weights = self.weights(inputs.sigmas, q.index)
        loss = per_sample.mean() if weights is None else (weights.to(per_sample) * per_sample).mean()
        return LossOutput(loss, q.rollout_nfe, q.rollout_samples, q.sigma.detach(), timings)


class SFTMethod:
    """``L = E || v(x_sigma, sigma, c) - (eps - x0) ||^2`` with ``x_sigma = (1 - sigma) x0 + sigma eps``."""

    def __init__(self, params: SFTParams) -> None:
        self.params = params

    def rollout_steps(self, default: int) -> int:
        return default

    def sample_sigma(self, n: int, sigmas: Tensor, generator: torch.Generator) -> Tensor:
        mode = self.params.timesteps
        if mode == "uniform":
            return torch.rand(n, generator=generator)
        if mode == "logit_normal":
            return torch.sigmoid(torch.randn(n, generator=generator))
        return sigmas.cpu()[torch.randint(sigmas.numel() - 1, (n,), generator=generator)]

    def loss(self, inputs: LossInputs) -> LossOutput:
        x0 = _require_targets(inputs.batch, "sft (flow matching on data)")
        n = x0.shape[0]
        generator, shard = inputs.generator, inputs.shard
        sigma = self.sample_sigma(n, inputs.sigmas, generator)
        eps = torch.randn(x0.shape, generator=generator)
        rows = shard.rows(n)
        batch, x0 = shard.take(inputs.batch), x0[rows]
        sigma, eps = sigma[rows].to(x0), eps[rows].to(x0)
        per_sample = _per_sample_mse(
            inputs.student(interpolate(x0, eps, sigma), sigma, batch.cond), target_velocity(x0, eps)
        )
        if self.params.weighting == "timestep":
            per_sample = per_sample * sigma.pow(2)
        return LossOutput(per_sample.mean(), 0, 0, sigma.detach())
