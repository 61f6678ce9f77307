"""The parameters of fieldkit's built-in routers and methods: what their YAML sections accept.

They live apart from the classes that use them (fieldkit.distill) so that validating a graph reads these
plain pydantic models without importing the training code.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from fieldkit.plugins.registry import Params

Bias = Literal["low", "mid", "high", "uniform", "stratified", "all"]
Granularity = Literal["update", "sample", "all"]


class RouterParams(Params):
    granularity: Granularity = Field(
        "update",
        description="update: one route per optimizer step (G = 1); sample: per micro-batch; all: G = M",
    )


class DistillParams(Params):
    """Settings shared by the on-policy method and its state/query/weighting baselines."""

    needs_route_fields: ClassVar[bool] = True

    states: Literal["student", "teacher", "data"] = Field(
        "student", description="where query states come from: the student's rollout, the teacher's, or data"
    )
    rollout_steps: int | None = Field(None, ge=1, le=1000, description="N Euler steps; default: flow.steps")
    query: Bias = Field("low", description="index bias: low = Beta(5,2), mid, high, uniform, stratified, all")
    k: int = Field(1, ge=1, le=1000, description="queries per rollout (at most the rollout's steps)")
    weighting: Literal["none", "timestep", "dt2"] = Field(
        "none",
        description="per-query loss weights: none; timestep: sigma^2 (the error of the implied "
        "x0 = x - sigma v); dt2: DiffusionOPD's dt_i^2 / 2, divided by its mean over the schedule "
        "(so the loss keeps its scale)",
    )
    reuse: int = Field(
        1,
        ge=1,
        le=64,
        description="updates each rollout serves: R > 1 rolls out every pre-step state once and draws the "
        "next R updates' queries from it (cheaper, slightly stale states; a resume rolls out afresh)",
    )

    buffer: int = Field(
        1,
        ge=1,
        le=64,
        description="rollouts kept per route (a replay buffer): each update draws every row of its batch "
        "from one of the kept rollouts, uniformly (1: the newest only); rollout passes per sample stay "
        "rollout / reuse",
    )
    staleness: int | None = Field(
        None,
        ge=0,
        le=1_000_000_000,
        description="the largest age, in optimizer updates, of a kept rollout that may still be drawn "
        "(older ones are dropped; none left: a fresh rollout); default: any in the buffer",
    )
    start_sigma: float | None = Field(
        None,
        gt=0,
        le=1,
        description="partial rollouts: start at the first schedule index i0 with sigma <= start_sigma from "
        "the data forward-noised there, simulate only steps i0..N-1 and query only indices >= i0 "
        "(rollout passes per sample: about the full rollout's times the fraction of steps simulated)",
    )
    start_from: Literal["target", "source"] = Field(
        "target",
        description="what a partial rollout forward-noises: the batch's clean targets, or the condition's "
        "source image (edits)",
    )
    on_policy: float = Field(
        1.0,
        ge=0,
        le=1,
        description="the final fraction of updates whose states come from the rollout; the others use "
        "off-policy data states (no rollout passes)",
    )
    handover: int = Field(
        0,
        ge=0,
        le=1_000_000_000,
        description="updates over which the on-policy fraction rises linearly from 0 to on_policy "
        "(0: on_policy from the start)",
    )

    @model_validator(mode="after")
    def _cheaper_states_need_a_rollout(self) -> DistillParams:
        """Each option that shapes rollout states is refused with data states, and inconsistent bounds."""
        if self.states == "data":
            rollout_only = {
                "reuse > 1 reuses rollout states": self.reuse > 1,
                "buffer > 1 keeps rollouts": self.buffer > 1,
                "start_sigma starts a partial rollout": self.start_sigma is not None,
                "on_policy < 1 or handover > 0 mixes rollout states with data states": self.on_policy < 1
                or self.handover > 0,
            }
            for what, given in rollout_only.items():
                if given:
                    raise ValueError(
                        f"{what}, but states is 'data' (no rollout); drop it or use states: student"
                    )
        if self.staleness is not None and self.reuse == 1 and self.buffer == 1:
            raise ValueError(
                "staleness bounds the age of kept rollouts, but none are kept (reuse: 1, buffer: 1); "
                "set reuse or buffer above 1, or drop staleness"
            )
        if self.staleness is not None and self.staleness < self.reuse - 1:
            raise ValueError(
                f"staleness {self.staleness} is below reuse - 1 = {self.reuse - 1}: a rollout serves "
                f"{self.reuse} updates, so its later updates would find nothing young enough to draw; "
                f"use staleness >= {self.reuse - 1} or a smaller reuse"
            )
        if self.start_from == "source" and self.start_sigma is None:
            raise ValueError("start_from: source names where a partial rollout starts; set start_sigma too")
        return self


class SFTParams(Params):
    """Plain flow matching on a bucket's data: ``|| v(x_sigma) - (eps - x0) ||^2``."""

    timesteps: Literal["uniform", "logit_normal", "schedule"] = Field(
        "logit_normal",
        description="how sigma is drawn: uniform, logit-normal (SD3), or flow-schedule indices",
    )
    weighting: Literal["none", "timestep"] = Field("none", description="timestep: weight sigma^2 per sample")


class OffPolicyParams(DistillParams):
    """DanceOPD with data states: the data forward-noised to the query sigma (off-policy distillation)."""

    states: Literal["student", "teacher", "data"] = "data"


class DenseParams(DistillParams):
    """DiffusionOPD-style: every state of the student's rollout, weighted by ``dt^2 / 2``."""

    query: Bias = "all"
    weighting: Literal["none", "timestep", "dt2"] = "dt2"


class FlowOPDParams(Params):
    """Flow-OPD: SDE rollouts, a per-step advantage from the teacher's transition, a clipped PPO ratio."""

    needs_route_fields: ClassVar[bool] = True

    reward: Literal["logratio", "release"] = Field(
        "logratio",
        description="logratio: the sampled log-ratio of the teacher's and the student's step densities, "
        "normalised in each group (fieldkit's); release: minus the closed-form KL of the two transition "
        "means, not normalised (the authors' release; its expected policy gradient is zero)",
    )
    rollout_steps: int | None = Field(None, ge=1, le=1000, description="N SDE steps; default: flow.steps")
    eta: float = Field(0.7, gt=0, description="noise level of the SDE rollout (Flow-GRPO's a)")
    group: int = Field(
        16, ge=2, le=1024, description="rollouts per condition (reward logratio normalises in a group)"
    )
    adv_clip: float = Field(5.0, gt=0, description="advantages are clipped to [-adv_clip, adv_clip]")
    ratio_clip: float = Field(1e-4, gt=0, lt=1, description="PPO clip of the probability ratio")
