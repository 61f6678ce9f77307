"""fieldkit: on-policy generative field distillation (DanceOPD) of flow-matching image models.

Public API: fields and conditions, the flow utilities, the operator algebra, attention, graph loading and
:func:`distill_graph` (named so because ``fieldkit.distill`` is the engine package).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fieldkit.errors import FieldkitError, GraphError, PluginError
from fieldkit.graph import loader
from fieldkit.graph.loader import Graph
from fieldkit.lazy import lazy_attributes

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from fieldkit.attention import attention, use_backend
    from fieldkit.cond import Cond
    from fieldkit.distill.callbacks import Callback
    from fieldkit.distill.engine import RunResult
    from fieldkit.field import ModuleField, VelocityField, as_field
    from fieldkit.flow import euler_sample, interpolate, rollout_states, shift_sigma, sigma_schedule
    from fieldkit.ops import Guidance, Masked, Mix, Scale, SigmaWeight, Sum, TimeSwitch, TowardSource
    from fieldkit.plugins.registry import Registry

# The names below import torch: they load on first use, so `fieldkit --help` and `fieldkit validate` start
# without it (PEP 562 module __getattr__).
_LAZY = {
    "fieldkit.attention": ("attention", "use_backend"),
    "fieldkit.cond": ("Cond",),
    "fieldkit.field": ("ModuleField", "VelocityField", "as_field"),
    "fieldkit.flow": ("euler_sample", "interpolate", "rollout_states", "shift_sigma", "sigma_schedule"),
    "fieldkit.ops": (
        "Guidance",
        "Masked",
        "Mix",
        "Scale",
        "SigmaWeight",
        "Sum",
        "TimeSwitch",
        "TowardSource",
    ),
}
__getattr__ = lazy_attributes("fieldkit", _LAZY)


__version__ = "0.1.0"


def load_graph(path: str | Path, overrides: Sequence[str] = (), registry: Registry | None = None) -> Graph:
    """Read, override (``--set`` strings such as ``"run.steps=100"``) and validate a graph file, without
    building anything or reading any weights; types come from the plugin host unless ``registry`` is given."""
    return loader.load_graph(path, overrides, _registry(registry))


def loads_graph(text: str, overrides: Sequence[str] = (), registry: Registry | None = None) -> Graph:
    """:func:`load_graph` for YAML text (relative paths resolve against the working folder)."""
    return loader.loads_graph(text, overrides, _registry(registry))


def _registry(registry: Registry | None) -> Registry:
    from fieldkit.plugins.manager import get_host

    return get_host().registry if registry is None else registry


def distill_graph(
    graph: Graph | str | Path,
    out: str | Path | None = None,
    *,
    overrides: tuple[str, ...] = (),
    resume: str | None = None,
    show_progress: bool = True,
    callbacks: Sequence[Callback] = (),
    replace: Mapping[str, Callback | None] | None = None,
) -> RunResult:
    """Train a graph's student (what ``fieldkit distill GRAPH`` runs) and return the run's result.

    ``graph`` is a validated :class:`Graph` or the path of a YAML file (then ``overrides`` are ``--set``
    strings such as ``"run.steps=100"``); ``resume="latest"`` continues the run in ``out``; ``callbacks``
    run after the default ones, and ``replace`` swaps or drops default ones by name
    (``{"samples": MyGrids()}``; see :mod:`fieldkit.distill.outputs`).
    """
    from fieldkit.distill.engine import Engine  # the engine pulls in accelerate: import it on use

    if not isinstance(graph, Graph):
        graph = load_graph(graph, overrides)
    engine = Engine(graph, None if out is None else Path(out), resume=resume, show_progress=show_progress)
    return engine.run(callbacks, replace=replace)


__all__ = [
    "Cond",
    "FieldkitError",
    "Graph",
    "GraphError",
    "Guidance",
    "Masked",
    "Mix",
    "ModuleField",
    "PluginError",
    "Scale",
    "SigmaWeight",
    "Sum",
    "TimeSwitch",
    "TowardSource",
    "VelocityField",
    "__version__",
    "as_field",
    "attention",
    "distill_graph",
    "euler_sample",
    "interpolate",
    "load_graph",
    "loads_graph",
    "rollout_states",
    "shift_sigma",
    "sigma_schedule",
    "use_backend",
]
