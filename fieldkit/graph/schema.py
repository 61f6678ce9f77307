"""The pydantic schema of a field graph file (the per-type parameters are checked against the registry).

A graph names its fields (sources and operators), binds fields to data buckets as routes, and says how the
student is trained: router, method, student, flow schedule and run settings.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from fieldkit.graph.refs import FieldRef
from fieldkit.plugins.registry import refuse_booleans

NODE_NAME = r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$"
#: the longest field or route name: a route's name is part of file names in the run folder (samples/)
NAME_MAX = 64
DEVICE = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"
#: ``run.compile``: off, or a ``torch.compile`` mode (fieldkit.compile); the first two record CUDA graphs.
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
#: batch_size x grad_accum: the samples of one optimizer step (each under its own cap is not enough).
MAX_SAMPLES_PER_STEP = 2**20


class Strict(BaseModel):
    """Unknown keys are errors, and so are non-finite numbers (``.inf``, ``.nan``) and booleans where a
    number belongs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_booleans(cls, value, info)


class TypedSpec(BaseModel):
    """``{type: NAME, ...params}``: a registered type and its parameters (checked by that type's Params)."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(min_length=1, description="a registered type name (see `fieldkit plugins`)")

    @property
    def params(self) -> dict[str, Any]:
        """Everything but ``type``."""
        return dict(self.model_extra or {})


class RouteSpec(Strict):
    """Binds one field to one data bucket, with a routing weight."""

    field: FieldRef | None = Field(
        None, description="the field that supervises this route's samples (sft trains on data and needs none)"
    )
    data: TypedSpec = Field(description="the data bucket: {type: DATASET, ...params}")
    weight: float = Field(1.0, gt=0, le=1e6, description="routing weight (probabilities are weights / sum)")
    metrics: list[TypedSpec] = Field(default_factory=list, description="metrics that score this route")


class LoraSpec(Strict):
    """LoRA adapter settings (peft)."""

    rank: int | None = Field(
        None, ge=1, le=4096, description="default: the model's choice (zimage: 128), else 8"
    )
    alpha: float | None = Field(None, gt=0, description="defaults to the rank")
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] | None = Field(None, description="module names to adapt; default: the model's choice")


class StudentSpec(Strict):
    """The trainable field: a copy of a source node, trained fully or through LoRA."""

    init: FieldRef = Field(description="the node whose weights initialise the student")
    train: Literal["full", "lora"] = "full"
    lora: LoraSpec = Field(default_factory=LoraSpec)
    ema: float | None = Field(None, gt=0, lt=1, description="EMA decay of the student weights, off if unset")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass (less memory, about 1/3 more compute)"
    )


class FlowSpec(Strict):
    """The sampling schedule: ``steps`` Euler steps, on the student's own scheduler's sigmas or on
    SD3-shifted even sigmas."""

    steps: int = Field(16, ge=1, le=1000)
    shift: float = Field(3.0, gt=0, le=1000, description="the shift of the `shift` schedule")
    schedule: Literal["auto", "model", "shift"] = Field(
        "auto",
        description="model: the sigmas the student's pipeline samples with at inference (its scheduler's "
        "shift or dynamic shifting); shift: shift_sigma(linspace(1, 0, steps + 1), shift); auto: model "
        "when the student's field has a scheduler (zimage, sd3 from a pipeline folder), else shift",
    )


OPTIMIZER_PARAMS = {"adamw": ("betas", "eps"), "sgd": ("momentum", "nesterov"), "adafactor": ()}


class OptimizerSpec(Strict):
    """The optimizer (torch.optim), e.g. ``{type: sgd, momentum: 0.9}``; ``run.lr`` and ``run.weight_decay``
    apply to every type, the other keys to the type they name."""

    type: Literal["adamw", "sgd", "adafactor"] = "adamw"
    betas: tuple[float, float] = Field((0.9, 0.999), description="adamw: moment decay rates, each in [0, 1)")
    eps: float = Field(1e-8, gt=0, description="adamw: added to the denominator")
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd: momentum factor")
    nesterov: bool = Field(False, description="sgd: Nesterov momentum (needs momentum > 0)")

    @model_validator(mode="after")
    def _params_fit_type(self) -> OptimizerSpec:
        for key in sorted(self.model_fields_set - {"type"}):
            if getattr(self, key) == type(self).model_fields[key].default:
                continue  # a default written out (a run's graph.json) asks for nothing
            owner = next(t for t, keys in OPTIMIZER_PARAMS.items() if key in keys)
            if owner != self.type:
                raise ValueError(f"{key!r} is a parameter of {owner}, not of {self.type}; remove it")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must each be in [0, 1), got {list(self.betas)}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0; set momentum (e.g. 0.9)")
        return self


class FsdpSpec(Strict):
    """How ``run.parallel: fsdp`` shards (FSDP2 through accelerate's plugin; see docs/reliability.md)."""

    reshard_after_forward: bool = Field(
        True,
        description="free each block's gathered weights after its forward (less memory, one more all-gather "
        "per block in the backward)",
    )
    teachers: Literal["replicate", "shard"] = Field(
        "replicate",
        description="the frozen route fields: a whole copy per process (replicate) or sharded like the "
        "student, with no optimizer (shard)",
    )


#: ``run.report_to``: the trackers accelerate supports (its ``LOGGER_TYPE_TO_CLASS``), or all installed ones.
TrackerName = Literal[
    "all", "tensorboard", "wandb", "mlflow", "aim", "comet_ml", "clearml", "dvclive", "swanlab", "trackio"
]
TRACKERS: tuple[str, ...] = get_args(TrackerName)[1:]


class TrackerSpec(Strict):
    """Where the trackers of ``run.report_to`` file the run (each tracker takes what it supports)."""

    project: str | None = Field(
        None,
        min_length=1,
        description="the project (wandb, trackio, swanlab, comet_ml, clearml; mlflow's experiment; a folder "
        "for tensorboard); default: the tracker's environment variable (WANDB_PROJECT, ...), else fieldkit",
    )
    name: str | None = Field(
        None, min_length=1, description="the run's name in its project; default: the run folder's name"
    )
    tags: list[str] = Field(default_factory=list, description="tags of the run (wandb, mlflow, clearml, aim)")
    dir: str | None = Field(
        None,
        min_length=1,
        description="where local tracker files go, relative to the working directory; default: RUN/trackers "
        "(wandb: WANDB_DIR when set)",
    )


def check_out(value: str, key: str) -> None:
    """Check an output folder ``value`` (``run.out`` or ``--out``): raises a ValueError, naming ``key``,
    for a placeholder other than ``{graph}``, a NUL byte or line break, a leading ``~`` (never
    expanded by fieldkit) or a name longer than a file system allows."""
    try:
        formatted = value.format(graph="graph")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{key} may hold the placeholder {{graph}} and no other ({type(exc).__name__}: {exc}); "
            "write a literal brace as {{ or }}"
        ) from None
    if "\0" in formatted or any(c in formatted for c in "\n\r"):
        raise ValueError(f"{key} holds a NUL byte or a line break; remove it")
    if formatted.startswith("~"):
        raise ValueError(
            f"{key} starts with '~', which fieldkit does not expand (it would make a folder named '~'; a "
            "shell expands it only at the start of a word, not after '='); write the full path"
        )
    longest = max((len(part.encode()) for part in formatted.split("/")), default=0)
    if longest > 255:
        raise ValueError(
            f"{key} has a name of {longest} bytes, more than the 255 a file system allows; shorten it"
        )


class RunSpec(Strict):
    """Optimisation and bookkeeping of a run."""

    steps: int = Field(200, ge=1, le=10**9, description="optimizer steps")
    batch_size: int = Field(16, ge=1, le=2**16, description="samples per micro-batch (per process)")
    grad_accum: int = Field(1, ge=1, le=2**16, description="micro-batches per optimizer step")
    lr: float = Field(2e-4, gt=0, description="peak learning rate (the schedule multiplies it)")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="decay after warmup: constant, cosine or linear to 0 at run.steps"
    )
    warmup_steps: int = Field(0, ge=0, description="updates over which the lr ramps linearly from 0")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="adamw, sgd or adafactor")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    seed: int = Field(0, ge=0, lt=2**63, description="seed of every random stream of the run")
    out: str = Field(
        "runs/{graph}",
        min_length=1,
        description="output folder, relative to the working directory; {graph} is the graph file's stem",
    )
    device: str = Field("auto", pattern=DEVICE, description="auto, cpu, cuda, cuda:N, mps")
    precision: Literal["fp32", "bf16"] = "fp32"
    attention: str | None = Field(None, description="attention backend (see fieldkit.attention)")
    compile: CompileMode = Field(
        "off",
        description="torch.compile the student's and teachers' forwards, per block: off or a mode "
        "(reduce-overhead and max-autotune record CUDA graphs and need CUDA)",
    )
    trace: bool = Field(
        True,
        description="replay the no-grad passes of traceable diffusers backbones (the rollout, the teachers, "
        "sample grids) on the CPU from a recording of their ops, checked equal to the eager pass "
        "(fieldkit.backbones.traced); off with run.compile or run.parallel: fsdp",
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="with several processes: ddp (every process holds the whole student) or fsdp (its "
        "parameters, gradients and optimizer state sharded over the processes); one process ignores it",
    )
    fsdp: FsdpSpec = Field(default_factory=FsdpSpec, description="FSDP settings (run.parallel: fsdp)")
    log_every: int = Field(10, ge=1)
    report_to: list[TrackerName] = Field(
        default_factory=list,
        description="trackers (accelerate's: a name or a list; all: every one installed) that get the "
        "interval means, sample grids, eval metrics and the graph as hyperparameters; pip install "
        "'fieldkit[trackers]' for tensorboard and wandb",
    )
    tracker: TrackerSpec = Field(
        default_factory=TrackerSpec, description="project, name, tags and folder of the trackers' run"
    )
    sample_every: int | None = Field(
        None, ge=1, description="a sample grid every N steps (one is always drawn at the end of the run)"
    )
    grid_samples: int = Field(
        8,
        ge=0,
        le=256,
        description="conditions per route in a sample grid; 0: no grids (nor sample_every), the run's "
        "end does not sample",
    )
    eval_samples: int = Field(
        64, ge=1, le=2**20, description="samples per route for the metrics at the end of a run"
    )
    pass_ratio: float = Field(
        0.95,
        gt=0,
        le=10,
        description="the bar of the results table: the student passes a route when its score is at least "
        "this times the route teacher's score (and combined, of the route teachers' mean)",
    )
    checkpoint_every: int | None = Field(None, ge=1)
    keep_last: int = Field(3, ge=1, le=10**6)
    max_bad_steps: int = Field(10, ge=1, description="consecutive non-finite steps before the run stops")

    @model_validator(mode="after")
    def _samples_per_step(self) -> RunSpec:
        if self.batch_size * self.grad_accum > MAX_SAMPLES_PER_STEP:
            raise ValueError(
                f"batch_size x grad_accum = {self.batch_size * self.grad_accum:,} samples per optimizer "
                f"step, more than the {MAX_SAMPLES_PER_STEP:,} allowed; lower batch_size or grad_accum"
            )
        return self

    @model_validator(mode="after")
    def _grids(self) -> RunSpec:
        if self.grid_samples == 0 and self.sample_every is not None:
            raise ValueError(
                f"run.sample_every: {self.sample_every} asks for a sample grid every {self.sample_every} "
                "steps, but run.grid_samples: 0 turns grids off; remove one of the two"
            )
        return self

    @model_validator(mode="after")
    def _fsdp_settings(self) -> RunSpec:
        if self.parallel != "fsdp" and self.fsdp != FsdpSpec():
            raise ValueError(
                "run.fsdp applies to run.parallel: fsdp only; set parallel: fsdp or remove run.fsdp"
            )
        if self.parallel == "fsdp" and self.compile != "off":
            raise ValueError(
                "run.compile is not supported with run.parallel: fsdp (the student is compiled per block "
                "before it is sharded); set compile: off"
            )
        return self

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("out")
    @classmethod
    def _out_placeholders(cls, value: str) -> str:
        check_out(value, "run.out")
        return value

    @field_validator("warmup_steps")
    @classmethod
    def _warmup_fits(cls, value: int, info: ValidationInfo) -> int:
        steps = info.data.get("steps")
        if steps is not None and value >= steps:
            raise ValueError(f"warmup_steps ({value}) must be below steps ({steps}); lower warmup_steps")
        return value

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_switch(cls, value: Any) -> Any:
        """``on`` (or true) is the default mode, false is off (``off`` is a mode name already)."""
        if isinstance(value, bool):
            return "default" if value else "off"
        return "default" if value == "on" else value

    @field_validator("compile")
    @classmethod
    def _compile_device(cls, value: str, info: ValidationInfo) -> str:
        device = str(info.data.get("device", "auto"))
        if value in CUDA_GRAPH_MODES and not (device == "auto" or device.startswith("cuda")):
            raise ValueError(
                f"{value} records CUDA graphs and needs a CUDA device, but run.device is {device!r}; "
                "use compile: default off CUDA"
            )
        return value


class GraphSpec(Strict):
    """A whole field graph file."""

    fields: dict[str, TypedSpec] = Field(min_length=1, description="named sources and operators")
    routes: dict[str, RouteSpec] = Field(default_factory=dict)
    router: TypedSpec = Field(default_factory=lambda: TypedSpec(type="hard"))
    method: TypedSpec = Field(default_factory=lambda: TypedSpec(type="danceopd"))
    student: StudentSpec | None = None
    flow: FlowSpec = Field(default_factory=FlowSpec)
    run: RunSpec = Field(default_factory=RunSpec)

    @field_validator("fields", "routes")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.fullmatch(NODE_NAME, str(name)):
                raise ValueError(
                    f"{str(name)[:80]!r} is not a valid name (letters, digits, '_' and '-', not first a "
                    f"digit, at most {NAME_MAX} characters)"
                )
        return value
