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

    @model_validator(mode="after")
    def _reuse_needs_a_rollout(self) -> DistillParams:
        if self.reuse > 1 and self.states == "data":
            raise ValueError("reuse > 1 reuses rollout states, but states is 'data'; use reuse: 1")
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
