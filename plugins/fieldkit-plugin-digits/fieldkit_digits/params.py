"""The parameter models of the plugin's types (light to import: no torch model, no scikit-learn)."""

from __future__ import annotations

from pydantic import Field

from fieldkit.graph import FieldRef
from fieldkit.plugins import Params
from fieldkit_digits.buckets import BucketParams, T2IParams, TargetParams
from fieldkit_digits.metrics import EditMetricParams, T2IMetricParams


class DescribeTargetParams(Params):
    field: FieldRef = Field(description="the T2I field (usually guided) that draws the edited canvas")


__all__ = [
    "BucketParams",
    "DescribeTargetParams",
    "EditMetricParams",
    "T2IMetricParams",
    "T2IParams",
    "TargetParams",
]
