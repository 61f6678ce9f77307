"""Everything a fieldkit plugin imports, in one module: the hook marker, the typed ``register`` callbacks, the
contracts of each kind, the optional capabilities, and the helpers a field, bucket or method is written with.

A plugin imports fieldkit from here and nowhere else, except a plugin that wraps a diffusers transformer,
which also builds on the backbone kit :mod:`fieldkit.backbones`; the rest of fieldkit may change between
versions. Importing this module imports no torch: the names that need it load on first use
(so ``fieldkit --help`` and ``fieldkit validate`` stay fast with a plugin installed). Put the imports a hook's
annotations need under ``if TYPE_CHECKING:`` and import torch-using names inside the factories.

- **Registering**: :data:`hookimpl`; each hook receives a ``register`` typed for its kind
  (:data:`RegisterSource`, :data:`RegisterOperator`, :data:`RegisterDataset`, :data:`RegisterMetric`,
  :data:`RegisterMethod`, :class:`RegisterRouter`); parameters subclass :class:`Params`; a parameter that
  names another node of the graph is a :class:`FieldRef`; factories receive a :class:`BuildContext`.
- **What factories return**: a :class:`VelocityField` (sources, operators; :class:`ModuleField` and
  :class:`Operator` are bases), a :class:`DataBucket` yielding :class:`Batch` es of :class:`Cond`, a
  :class:`Metric`, a :class:`Method` (``loss(LossInputs) -> LossOutput``), a :class:`Router` over
  :class:`Route` s.
- **Optional capabilities** (define the member and the core uses it): :class:`HasUncond`,
  :class:`HasSamplingSigmas` (fields), :class:`HasCaptions`, :class:`HasEvaluation` (buckets),
  :class:`HasLoraTargets`, :class:`HasLoraRank`, :class:`SupportsGradientCheckpointing`,
  :class:`SavesPretrained` (models), :class:`NeedsRouteFields` (a method's params),
  :class:`HasCheckpointState` (a router, or anything the core saves in checkpoints).
- **Rollouts** (what the built-in methods are written with): :func:`euler_step`, :func:`euler_sample`,
  :func:`rollout_states`, :func:`generate`, :func:`interpolate`, :func:`target_velocity`,
  :func:`sigma_schedule`, :func:`shift_sigma`, :func:`sample_indices`, :func:`broadcast_sigma`. In a method,
  predict with ``inputs.student`` (the forward with gradients) and roll out with ``inputs.policy``.
- **Files**: :func:`atomic_path` (write a cache or an asset whole or not at all), :func:`load_pretrained`
  (fieldkit's own model folders), :func:`read_rows`, :func:`read_texts` and :func:`fill` (prompt files),
  :func:`check_new_folder` (refuse to write a model folder over anything already there).
- **Commands**: :func:`graph_options` gives a plugin's click command ``GRAPH`` and ``--set`` and passes it
  the validated :class:`Graph`; :func:`seed_option` is ``--seed`` bounded to what torch's generators take.
- **Backbones** (with :mod:`fieldkit.backbones`): :class:`Guidance` and :func:`cond_and_uncond` (the
  batched cond + uncond call), :func:`uncond_of`, :func:`attention` (fieldkit's attention dispatcher),
  :class:`AdapterSwitch` and :func:`random_lora` (LoRA adapters over a shared base).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fieldkit.capabilities import (
    HasCaptions,
    HasCheckpointState,
    HasEvaluation,
    HasLoraRank,
    HasLoraTargets,
    HasSamplingSigmas,
    HasUncond,
    NeedsRouteFields,
    SavesPretrained,
    SupportsGradientCheckpointing,
)
from fieldkit.errors import FieldkitError
from fieldkit.graph.refs import FieldRef
from fieldkit.lazy import lazy_attributes
from fieldkit.plugins.hookspecs import hookimpl
from fieldkit.plugins.registry import Params

if TYPE_CHECKING:
    from fieldkit.atomic import atomic_path
    from fieldkit.attention import attention
    from fieldkit.commands.options import graph_options, seed_option
    from fieldkit.cond import Cond
    from fieldkit.data import Batch, Shard, batch_captions, evaluation_bucket
    from fieldkit.distill.queries import sample_indices
    from fieldkit.field import ModuleField, VelocityField, as_field, broadcast_sigma, uncond_of
    from fieldkit.files import check_new_folder
    from fieldkit.flow import (
        euler_sample,
        euler_step,
        generate,
        interpolate,
        rollout_states,
        shift_sigma,
        sigma_schedule,
        target_velocity,
    )
    from fieldkit.graph.builder import BuildContext
    from fieldkit.graph.loader import Graph
    from fieldkit.models import load_pretrained
    from fieldkit.models.lora import AdapterSwitch, random_lora
    from fieldkit.ops.base import Operator
    from fieldkit.ops.guidance import Guidance, cond_and_uncond
    from fieldkit.protocols import (
        DataBucket,
        LossInputs,
        LossOutput,
        Method,
        Metric,
        RegisterDataset,
        RegisterMethod,
        RegisterMetric,
        RegisterOperator,
        RegisterRouter,
        RegisterSource,
        Route,
        Router,
    )
    from fieldkit.tables import fill, read_rows, read_texts

# The names below import torch: they load on first use (PEP 562 module __getattr__).
_LAZY = {
    "fieldkit.atomic": ("atomic_path",),
    "fieldkit.attention": ("attention",),
    "fieldkit.commands.options": ("graph_options", "seed_option"),
    "fieldkit.cond": ("Cond",),
    "fieldkit.data": ("Batch", "Shard", "batch_captions", "evaluation_bucket"),
    "fieldkit.distill.queries": ("sample_indices",),
    "fieldkit.files": ("check_new_folder",),
    "fieldkit.field": ("ModuleField", "VelocityField", "as_field", "broadcast_sigma", "uncond_of"),
    "fieldkit.flow": (
        "euler_sample",
        "euler_step",
        "generate",
        "interpolate",
        "rollout_states",
        "shift_sigma",
        "sigma_schedule",
        "target_velocity",
    ),
    "fieldkit.graph.builder": ("BuildContext",),
    "fieldkit.graph.loader": ("Graph",),
    "fieldkit.models": ("load_pretrained",),
    "fieldkit.models.lora": ("AdapterSwitch", "random_lora"),
    "fieldkit.ops.base": ("Operator",),
    "fieldkit.ops.guidance": ("Guidance", "cond_and_uncond"),
    "fieldkit.protocols": (
        "DataBucket",
        "LossInputs",
        "LossOutput",
        "Method",
        "Metric",
        "RegisterDataset",
        "RegisterMethod",
        "RegisterMetric",
        "RegisterOperator",
        "RegisterRouter",
        "RegisterSource",
        "Route",
        "Router",
    ),
    "fieldkit.tables": ("fill", "read_rows", "read_texts"),
}
__getattr__ = lazy_attributes("fieldkit.plugin_api", _LAZY)


__all__ = [
    "AdapterSwitch",
    "Batch",
    "BuildContext",
    "Cond",
    "DataBucket",
    "FieldRef",
    "FieldkitError",
    "Graph",
    "Guidance",
    "HasCaptions",
    "HasCheckpointState",
    "HasEvaluation",
    "HasLoraRank",
    "HasLoraTargets",
    "HasSamplingSigmas",
    "HasUncond",
    "LossInputs",
    "LossOutput",
    "Method",
    "Metric",
    "ModuleField",
    "NeedsRouteFields",
    "Operator",
    "Params",
    "RegisterDataset",
    "RegisterMethod",
    "RegisterMetric",
    "RegisterOperator",
    "RegisterRouter",
    "RegisterSource",
    "Route",
    "Router",
    "SavesPretrained",
    "Shard",
    "SupportsGradientCheckpointing",
    "VelocityField",
    "as_field",
    "atomic_path",
    "attention",
    "batch_captions",
    "broadcast_sigma",
    "check_new_folder",
    "cond_and_uncond",
    "euler_sample",
    "euler_step",
    "evaluation_bucket",
    "fill",
    "generate",
    "graph_options",
    "hookimpl",
    "interpolate",
    "load_pretrained",
    "random_lora",
    "read_rows",
    "read_texts",
    "rollout_states",
    "sample_indices",
    "seed_option",
    "shift_sigma",
    "sigma_schedule",
    "target_velocity",
    "uncond_of",
]
