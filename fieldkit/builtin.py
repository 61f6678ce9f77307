"""fieldkit's own plugin: the built-in sources, operators and data buckets, registered through the same
hooks a third-party plugin uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from fieldkit.errors import FieldkitError
from fieldkit.graph.refs import FieldRef
from fieldkit.models.config import MMDiTConfig
from fieldkit.plugins.hookspecs import hookimpl
from fieldkit.plugins.registry import Params
from fieldkit.training_params import (
    DenseParams,
    DistillParams,
    FlowOPDParams,
    OffPolicyParams,
    RouterParams,
    SFTParams,
)

if TYPE_CHECKING:  # the factories import these on use: validating a graph and --help need no torch
    import torch

    from fieldkit import ops
    from fieldkit.analytic import GaussianMixtureData, GaussianMixtureField, MixtureAccuracy
    from fieldkit.distill.flowopd import FlowOPDMethod
    from fieldkit.distill.methods import DistillMethod, SFTMethod
    from fieldkit.distill.routing import HardRouter, SoftRouter
    from fieldkit.graph.builder import BuildContext
    from fieldkit.models import MMDiT, PretrainedField
    from fieldkit.protocols import (
        RegisterDataset,
        RegisterMethod,
        RegisterMetric,
        RegisterOperator,
        RegisterRouter,
        RegisterSource,
        Route,
    )

# -- sources ---------------------------------------------------------------------------------------------


class GaussianMixtureParams(Params):
    """A closed-form mixture of isotropic Gaussians, one component per label."""

    classes: int = Field(ge=1, le=1000)
    shape: list[int] = Field(min_length=1, description="per-sample shape, e.g. [1, 8, 8]")
    std: float = Field(0.1, gt=0)
    seed: int = Field(0, ge=0, lt=2**63, description="seed of the components' means")


def build_gaussian_mixture(p: GaussianMixtureParams, ctx: BuildContext) -> GaussianMixtureField:
    """The exact velocity of a labelled Gaussian mixture (means drawn with ``seed``)."""
    from fieldkit.analytic import GaussianMixtureField

    return GaussianMixtureField.random(p.classes, tuple(p.shape), std=p.std, seed=p.seed)


def build_gaussian_mixture_data(p: GaussianMixtureParams, ctx: BuildContext) -> GaussianMixtureData:
    """Labels and exact samples of the same Gaussian mixture."""
    from fieldkit.analytic import GaussianMixtureData

    return GaussianMixtureData(build_gaussian_mixture(p, ctx))


class CheckpointParams(Params):
    """A fieldkit model folder (config.json + model.safetensors), as written by save_pretrained."""

    path: str = Field(description="model folder; relative paths resolve against the graph file's folder")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(None, description="default: as stored")


class MMDiTParams(Params):
    """A fresh MMDiT (zero output at start) built from its config."""

    config: MMDiTConfig = Field(default_factory=MMDiTConfig)
    seed: int = Field(0, ge=0, lt=2**63, description="initialisation seed")


def build_checkpoint(p: CheckpointParams, ctx: BuildContext) -> PretrainedField:
    """fieldkit's own model read from a safetensors folder."""
    import torch

    from fieldkit.models import load_pretrained

    return load_pretrained(ctx.path(p.path), dtype=getattr(torch, p.dtype) if p.dtype else None)


def build_mmdit(p: MMDiTParams, ctx: BuildContext) -> MMDiT:
    """A freshly initialised MMDiT (seeded), e.g. the starting point of a teacher trained from scratch."""
    import torch

    from fieldkit.memory_guard import check_model_fits
    from fieldkit.models import MMDiT

    if ctx.device.type == "meta":  # validate --build and the memory guard: shapes only, nothing allocated
        with torch.device("meta"):
            return MMDiT(p.config)
    check_model_fits(lambda: MMDiT(p.config), ctx.device, "a fieldkit.mmdit of this config")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.seed)
        return MMDiT(p.config)


def build_mixture_accuracy(p: GaussianMixtureParams, ctx: BuildContext) -> MixtureAccuracy:
    """Accuracy (nearest component is the asked one) and spread of samples of the Gaussian mixture."""
    from fieldkit.analytic import MixtureAccuracy

    return MixtureAccuracy(build_gaussian_mixture(p, ctx))


class LoraParams(Params):
    """A LoRA over a fieldkit model field, sharing the base's weights in memory (one base, N adapters)."""

    base: FieldRef = Field(description="the field the LoRA was trained from (e.g. a fieldkit.checkpoint)")
    path: str = Field(
        description="peft LoRA folder (adapter_config.json + adapter_model.safetensors, as `fieldkit export "
        "RUN --format peft` writes); relative to the graph"
    )
    adapter: str | None = Field(None, description="adapter name; default: the folder's name")
    scale: float = Field(1.0, description="LoRA scale: W x + scale (alpha / r) B A x")
    missing: str | None = Field(
        None,
        description="how to make `path` when it does not exist yet (e.g. the script that trains the LoRA)",
    )


def build_lora(p: LoraParams, ctx: BuildContext) -> torch.nn.Module:
    """``W x + scale (alpha / r) B A x`` over the base field's weights (shared, not copied)."""
    import torch

    from fieldkit.models.lora import lora_over, tuner_layers

    folder = ctx.path(p.path)
    if not folder.is_dir():
        raise FieldkitError(
            f"no LoRA folder at {folder}",
            hint=p.missing or "train the LoRA, then `fieldkit export RUN --format peft -o` that folder",
        )
    base = ctx.field(p.base)
    if not isinstance(base, torch.nn.Module) or tuner_layers(base):
        raise FieldkitError(
            f"fieldkit.lora's base {str(p.base)!r} must be a plain model field (e.g. fieldkit.checkpoint), "
            f"got {type(base).__name__}{' with LoRA adapters' if isinstance(base, torch.nn.Module) else ''}",
            hint="a diffusers backbone's LoRA is its plugin's NAME.lora (e.g. sd3.lora)",
        )
    return lora_over(base, folder, p.adapter or folder.name, scale=p.scale)


class MergeParams(Params):
    """A parameter-space merge of source fields of one architecture: an average or task arithmetic."""

    fields: list[FieldRef] = Field(min_length=1, description="sources with weights, of one architecture")
    weights: list[float] | None = Field(
        None,
        description="merge weights, divided by their sum; default: equal. Negative weights are task "
        "arithmetic: fields [a, b, base] with weights [1, 1, -1] give a + b - base",
    )


def build_merge(p: MergeParams, ctx: BuildContext) -> torch.nn.Module:
    """``theta = sum_i w_i theta_i / sum_i w_i`` over the named sources' weights."""
    import torch

    from fieldkit.merge import merge_models

    models = [m for name in p.fields if isinstance(m := ctx.field(name), torch.nn.Module)]
    if len(models) != len(p.fields):
        raise FieldkitError("merge needs sources with weights (e.g. fieldkit.checkpoint), not operators")
    return merge_models(models, p.weights)


# -- operators ------------------------------------------------------------------------------------------


class GuidanceParams(Params):
    field: FieldRef
    w: float = Field(description="guidance weight; 1 is the plain conditional field")


class SigmaWeightParams(Params):
    at_noise: float = Field(ge=0, description="weight at sigma = 1")
    at_data: float = Field(ge=0, description="weight at sigma = 0")


class MixParams(Params):
    fields: list[FieldRef] = Field(min_length=1)
    weights: list[float | SigmaWeightParams] | None = Field(None, description="default: equal weights")

    @model_validator(mode="after")
    def _weights_sum_positive(self) -> MixParams:
        """The weights are normalised by their sum, which is linear in sigma: it must be > 0 at both ends."""
        if self.weights is None:
            return self
        for end in ("at_noise", "at_data"):
            total = sum(w if isinstance(w, float) else getattr(w, end) for w in self.weights)
            if total <= 0:
                raise ValueError(f"the weights sum to {total:g} ({end}); at least one must be > 0")
        return self


class MaskedParams(Params):
    inside: FieldRef
    outside: FieldRef
    mask_key: str = "mask"


class TowardSourceParams(Params):
    source_key: str = "source"


class TimeSwitchParams(Params):
    high: FieldRef = Field(description="the field used where sigma >= sigma0 (the noisy end)")
    low: FieldRef
    sigma0: float = Field(ge=0, le=1)


class ScaleParams(Params):
    field: FieldRef
    c: float


class SumParams(Params):
    fields: list[FieldRef] = Field(min_length=1)
    coefficients: list[float] | None = None


def build_guidance(p: GuidanceParams, ctx: BuildContext) -> ops.Guidance:
    """Classifier-free guidance: ``v_u + w (v_c - v_u)`` in one batched forward."""
    from fieldkit import ops

    return ops.Guidance(ctx.field(p.field), p.w)


def build_mix(p: MixParams, ctx: BuildContext) -> ops.Mix:
    """Weighted average of fields (the soft-routing baseline); weights may be linear in sigma."""
    from fieldkit import ops

    weights = None
    if p.weights is not None:
        weights = [w if isinstance(w, float) else ops.SigmaWeight(w.at_noise, w.at_data) for w in p.weights]
    return ops.Mix([ctx.field(f) for f in p.fields], weights)


def build_masked(p: MaskedParams, ctx: BuildContext) -> ops.Masked:
    """``m * inside + (1 - m) * outside`` with the mask read from the Cond."""
    from fieldkit import ops

    return ops.Masked(ctx.field(p.inside), ctx.field(p.outside), mask_key=p.mask_key)


def build_toward_source(p: TowardSourceParams, ctx: BuildContext) -> ops.TowardSource:
    """``(x - source) / sigma``: the field that carries a state to the edit's source image."""
    from fieldkit import ops

    return ops.TowardSource(p.source_key)


def build_time_switch(p: TimeSwitchParams, ctx: BuildContext) -> ops.TimeSwitch:
    """One field above ``sigma0``, another below."""
    from fieldkit import ops

    return ops.TimeSwitch(ctx.field(p.high), ctx.field(p.low), p.sigma0)


def build_scale(p: ScaleParams, ctx: BuildContext) -> ops.Scale:
    """``c * v``."""
    from fieldkit import ops

    return ops.Scale(ctx.field(p.field), p.c)


def build_sum(p: SumParams, ctx: BuildContext) -> ops.Sum:
    """``sum_i c_i v_i``."""
    from fieldkit import ops

    return ops.Sum([ctx.field(f) for f in p.fields], p.coefficients)


# -- hooks ----------------------------------------------------------------------------------------------


@hookimpl
def fieldkit_register_sources(register: RegisterSource) -> None:
    register("gaussian_mixture", build_gaussian_mixture, GaussianMixtureParams)
    register("fieldkit.checkpoint", build_checkpoint, CheckpointParams)
    register("fieldkit.mmdit", build_mmdit, MMDiTParams)
    register("fieldkit.lora", build_lora, LoraParams)
    register("merge", build_merge, MergeParams)


@hookimpl
def fieldkit_register_operators(register: RegisterOperator) -> None:
    register("guidance", build_guidance, GuidanceParams)
    register("mix", build_mix, MixParams)
    register("masked", build_masked, MaskedParams)
    register("toward_source", build_toward_source, TowardSourceParams)
    register("time_switch", build_time_switch, TimeSwitchParams)
    register("scale", build_scale, ScaleParams)
    register("sum", build_sum, SumParams)


@hookimpl
def fieldkit_register_datasets(register: RegisterDataset) -> None:
    register("gaussian_mixture", build_gaussian_mixture_data, GaussianMixtureParams)


# -- routers and methods -----------------------------------------------------------------------------------


def build_hard_router(p: RouterParams, routes: Sequence[Route], ctx: BuildContext) -> HardRouter:
    """Hard routing (DanceOPD): each sample is supervised by its own route's field only."""
    from fieldkit.distill.routing import HardRouter

    return HardRouter(routes, p.granularity)


def build_soft_router(p: RouterParams, routes: Sequence[Route], ctx: BuildContext) -> SoftRouter:
    """Soft routing (baseline): every sample is supervised by the weighted mix of all route fields."""
    from fieldkit.distill.routing import SoftRouter

    return SoftRouter(routes, p.granularity)


def build_distill_method(p: DistillParams, ctx: BuildContext) -> DistillMethod:
    """Field distillation on query states (DanceOPD and its state/query/weighting baselines)."""
    from fieldkit.distill.methods import DistillMethod

    return DistillMethod(p)


def build_flowopd_method(p: FlowOPDParams, ctx: BuildContext) -> FlowOPDMethod:
    """Flow-OPD: a clipped policy gradient over SDE rollouts against the teacher's transitions."""
    from fieldkit.distill.flowopd import FlowOPDMethod

    return FlowOPDMethod(p)


def build_sft_method(p: SFTParams, ctx: BuildContext) -> SFTMethod:
    """Plain flow matching on the buckets' data (teacher training, joint-training baseline)."""
    from fieldkit.distill.methods import SFTMethod

    return SFTMethod(p)


@hookimpl
def fieldkit_register_routers(register: RegisterRouter) -> None:
    register("hard", build_hard_router, RouterParams)
    register("soft", build_soft_router, RouterParams)


@hookimpl
def fieldkit_register_methods(register: RegisterMethod) -> None:
    register("danceopd", build_distill_method, DistillParams)
    register("offpolicy", build_distill_method, OffPolicyParams)
    register("dense", build_distill_method, DenseParams)
    register("flowopd", build_flowopd_method, FlowOPDParams)
    register("sft", build_sft_method, SFTParams)


@hookimpl
def fieldkit_register_metrics(register: RegisterMetric) -> None:
    register("gaussian_mixture", build_mixture_accuracy, GaussianMixtureParams)
