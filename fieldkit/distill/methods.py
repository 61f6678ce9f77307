"""Methods: how query states are chosen and the loss is formed. Every baseline is a setting of one model.

``danceopd``: states from the current student's own rollout, K low-noise queries, velocity MSE.
``offpolicy``: data forward-noised to the query sigma. ``dense``: every rollout state, ``dt^2 / 2`` weights
(DiffusionOPD-style). ``sft``: plain flow matching on data (teacher training and the joint-training baseline).

Cheaper on-policy states (``method.*``; rollout passes per sample in brackets, R = ``reuse``):

- ``reuse`` / ``buffer`` / ``staleness``: a full rollout every R updates of a route, kept in a FIFO of the
  ``buffer`` newest; each update draws its rows uniformly from kept rollouts at most ``staleness`` updates
  old [rollout / R].
- ``start_sigma`` / ``start_from``: partial rollouts from ``x_i0 = (1 - sigma_i0) x0 + sigma_i0 eps`` (``x0``
  the target or the edit's source), simulating steps ``i0..N-1`` only [the simulated steps].
- ``on_policy`` / ``handover``: each update takes rollout states with probability
  ``lambda(step) = on_policy min(1, step / handover)``, else data states (the on-policy fraction lambda of
  Agarwal et al., "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes", GKD,
  ICLR 2024, with a linear off-to-on handover) [lambda times the rollout's].
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
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


def _require_targets(
    batch: Batch,
    what: str,
    hint: str = "use a data bucket with targets, or the on-policy method (states: student)",
) -> Tensor:
    if batch.target is None:
        raise FieldkitError(
            f"{what} needs clean target images, but this route's data bucket yields conditions only",
            hint=hint,
        )
    return batch.target


@dataclass(frozen=True)
class Rollout:
    """The pre-step states ``[B, N - i0, ...]`` of one rollout from its start index ``i0`` on (this
    process's rows), the conditions it was rolled out for, and the update it was rolled out at."""

    states: Tensor
    cond: Cond
    step: int


@dataclass
class Replay:
    """A route's kept rollouts, oldest first (at most ``method.buffer``), and how many more updates the
    newest serves before the next rollout (``method.reuse``)."""

    rollouts: deque[Rollout]
    left: int = 0


def _query_cond(cond: Cond, k: int) -> Cond:
    """The conditions of ``k`` queries per sample, ``[B * K]``, in the order of the flattened states."""
    return cond if k == 1 else cond.repeat_interleave(k)


class DistillMethod:
    """``L = E || v_student(sg(x_i), sigma_i, c) - v_route(sg(x_i), sigma_i, c) ||^2`` over query states."""

    def __init__(self, params: DistillParams) -> None:
        self.params = params
        self.replays: dict[int, Replay] = {}  # per route field, while ``reuse`` or ``buffer`` > 1
        self._decided: tuple[int, bool] | None = None  # the curriculum's last draw: (update, on-policy)

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

    def on_policy_fraction(self, step: int) -> float:
        """``lambda(step) = on_policy min(1, step / handover)`` (``on_policy`` when ``handover`` is 0)."""
        p = self.params
        return p.on_policy if p.handover == 0 else p.on_policy * min(1.0, step / p.handover)

    def _on_policy(self, step: int, generator: torch.Generator) -> bool:
        """Whether update ``step`` takes rollout states: always without a curriculum (and nothing is drawn),
        else ``u < lambda(step)`` for one ``u ~ U[0, 1)`` per update, which its micro-batches share."""
        p = self.params
        if p.states == "data":
            return False
        if p.on_policy == 1 and p.handover == 0:
            return True
        if self._decided is None or self._decided[0] != step:
            u = float(torch.rand((), generator=generator, dtype=torch.float64))
            self._decided = (step, u < self.on_policy_fraction(step))
        return self._decided[1]

    def start_index(self, sigmas: Tensor) -> int:
        """``i0``: the first schedule index with ``sigma <= start_sigma`` (0 without partial rollouts)."""
        start = self.params.start_sigma
        if start is None:
            return 0
        steps = sigmas.numel() - 1
        first = int((sigmas[:steps] > start).sum())
        if first == steps:
            last = float(sigmas[steps - 1])
            raise FieldkitError(
                f"method.start_sigma {start} is below every pre-step sigma of this route's {steps}-step "
                f"schedule (the last is {last:.4g}): a partial rollout would simulate nothing",
                hint=f"use a start_sigma of at least {last:.4g}",
            )
        return first

    def _start_state(self, batch: Batch, eps: Tensor, sigma: Tensor) -> Tensor:
        """A partial rollout's first state ``x_i0 = (1 - sigma_i0) x0 + sigma_i0 eps``, ``x0`` the clean
        target or the condition's source image; ``eps`` itself without partial rollouts."""
        p = self.params
        if p.start_sigma is None:
            return eps
        if p.start_from == "target":
            hint = "use a data bucket with targets, or start_from: source for edits"
            x0 = _require_targets(batch, "partial rollouts (method.start_sigma)", hint)
        elif "source" in batch.cond:
            x0 = batch.cond["source"]
        else:
            raise FieldkitError(
                "method.start_from: source starts partial rollouts from the condition's source image, but "
                "this route's conditions have no 'source'",
                hint="use start_from: target, or give this route a data bucket of edits",
            )
        if x0.shape != eps.shape:
            raise FieldkitError(
                f"partial rollouts start from the {p.start_from} images, whose shape "
                f"{tuple(x0.shape[1:])} is not the flow state's {tuple(eps.shape[1:])}",
                hint="use start_from: target, or a bucket whose images are flow states",
            )
        return interpolate(x0.to(eps), eps, sigma.expand(len(eps)))

    def query_states(self, inputs: LossInputs) -> QueryStates:
        """This shard's query states, chosen by ``states`` (the student's or the teacher's rollout, or data
        forward-noised; the curriculum mixes rollout and data states), at indices drawn by ``query`` and
        ``k`` (at least ``i0`` for partial rollouts). The states are inference tensors."""
        p, sigmas, generator = self.params, inputs.sigmas, inputs.generator
        steps = sigmas.numel() - 1
        n = inputs.batch.cond.batch_size or 0
        first = self.start_index(sigmas)
        # Randomness is drawn for the global batch on every process, then sharded (see Shard).
        rollout = self._on_policy(inputs.step, generator)
        idx = sample_indices(steps, n, p.k, p.query, generator, start=first)
        k = idx.shape[1]
        noise = torch.randn((n, 1 if rollout else k, *inputs.shape), generator=generator)
        rows = inputs.shard.rows(n)
        # The rollout plans its early stop from the indices on the host: keep them there too (no device sync).
        batch, plan = inputs.shard.take(inputs.batch), idx[rows]
        # FSDP: every process rolls out as long as the global batch's longest row (same number of forwards)
        at_least = int(idx.max()) if inputs.shard.lockstep and idx.numel() else 0
        idx, noise = plan.to(sigmas.device), noise[rows].to(sigmas.device)
        # Tensors that will meet autograd are made outside inference mode.
        sigma = sigmas[idx].flatten()
        cond = _query_cond(batch.cond, k)
        with torch.inference_mode():
            if not rollout:
                x0 = _require_targets(batch, "off-policy states").repeat_interleave(k, 0)
                return QueryStates(interpolate(x0, noise.flatten(0, 1), sigma), sigma, cond, idx)
            roller = inputs.policy if p.states == "student" else inputs.target
            if roller is None:
                raise FieldkitError("this route has no field to roll out", hint="give the route a 'field'")
            start = self._start_state(batch, noise[:, 0], sigmas[first])
            # A LoRA student rolls out with its adapters merged: each forward is a plain one.
            with merged_lora(inputs.policy) if p.states == "student" else contextlib.nullcontext():
                if p.reuse > 1 or p.buffer > 1:
                    states, nfe, samples, drawn = self._kept_states(inputs, roller, start, batch, plan, first)
                else:
                    states, nfe = rollout_states(
                        roller, start, batch.cond, sigmas[first:], plan - first, max(at_least - first, 0)
                    )
                    samples, drawn = int((plan.max(dim=1).values - first).sum()), None
        if drawn is not None:  # the kept rollouts' conditions go with their states (made outside inference)
            conds, pick = drawn
            kept = (
                conds[0]
                if pick is None
                else Cond.cat(conds).index(pick * len(pick) + torch.arange(len(pick)))
            )
            cond = _query_cond(kept, k)
        return QueryStates(states.flatten(0, 1), sigma, cond, idx, nfe, samples)

    def _kept_states(
        self, inputs: LossInputs, roller: VelocityField, start: Tensor, batch: Batch, plan: Tensor, first: int
    ) -> tuple[Tensor, int, int, tuple[list[Cond], Tensor | None]]:
        """The states ``[B, K, ...]`` at ``plan`` drawn from the route's kept rollouts, with the NFEs and
        samples this update's rollout cost and what its conditions are made of (the kept rollouts'
        conditions and the rollout each row was drawn from, ``None``: the only one).

        Rollouts older than ``staleness`` updates are dropped; a fresh one (every state from ``i0`` to the
        last pre-step state) is rolled out for this batch every ``reuse`` updates of the route, or when none
        is left, and pushed into a FIFO of at most ``buffer``. Row ``b`` comes from row ``b`` of a kept
        rollout drawn uniformly (rows of one rollout are i.i.d., so this is a uniform draw over rows that
        keeps every row on its own process)."""
        p = self.params
        replay = self.replays.setdefault(id(inputs.target), Replay(deque(maxlen=p.buffer)))
        kept = replay.rollouts
        if kept and len(kept[-1].states) != len(plan):  # another batch size: start afresh
            kept.clear()
        while kept and p.staleness is not None and inputs.step - kept[0].step > p.staleness:
            kept.popleft()
        nfe = samples = 0
        if not kept or replay.left == 0:
            steps = inputs.sigmas.numel() - 1
            every = torch.arange(steps - first).expand(len(plan), steps - first)
            states, nfe = rollout_states(roller, start, batch.cond, inputs.sigmas[first:], every)
            samples = len(plan) * (steps - 1 - first)
            kept.append(Rollout(states, batch.cond, inputs.step))
            replay.left = p.reuse
        replay.left -= 1
        device = kept[-1].states.device
        at = (plan - first).to(device)
        rows = torch.arange(len(plan), device=device)[:, None]
        if len(kept) == 1:
            return kept[0].states[rows, at], nfe, samples, ([kept[0].cond], None)
        n = inputs.batch.cond.batch_size or 0
        pick = torch.randint(len(kept), (n,), generator=inputs.generator)[inputs.shard.rows(n)]
        out = kept[-1].states.new_empty((*at.shape, *kept[-1].states.shape[2:]))
        for j, rollout in enumerate(kept):
            mine = (pick == j).nonzero().flatten().to(device)
            out[mine] = rollout.states[mine[:, None], at[mine]]
        return out, nfe, samples, ([r.cond for r in kept], pick)

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
