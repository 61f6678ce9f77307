"""fieldkit: on-policy generative field distillation (DanceOPD) of flow-matching image models.

Public API: fields and conditions, the flow utilities, the operator algebra, and graph loading.
"""

from fieldkit.cond import Cond
from fieldkit.errors import FieldkitError, GraphError, PluginError
from fieldkit.field import ModuleField, VelocityField, as_field
from fieldkit.flow import euler_sample, interpolate, rollout_states, shift_sigma, sigma_schedule
from fieldkit.graph.loader import Graph, load_graph, loads_graph
from fieldkit.ops import Guidance, Masked, Mix, Scale, SigmaWeight, Sum, TimeSwitch, TowardSource

__version__ = "0.1.0"

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
    "euler_sample",
    "interpolate",
    "load_graph",
    "loads_graph",
    "rollout_states",
    "shift_sigma",
    "sigma_schedule",
]
