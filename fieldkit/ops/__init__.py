"""The operator algebra: fields built from other fields, each one an ordinary field itself."""

from fieldkit.ops.arith import Scale, Sum
from fieldkit.ops.base import Operator
from fieldkit.ops.guidance import Guidance
from fieldkit.ops.mask import Masked
from fieldkit.ops.mix import Mix, SigmaWeight
from fieldkit.ops.source import TowardSource
from fieldkit.ops.time import TimeSwitch

__all__ = [
    "Guidance",
    "Masked",
    "Mix",
    "Operator",
    "Scale",
    "SigmaWeight",
    "Sum",
    "TimeSwitch",
    "TowardSource",
]
