"""The verdict rule of a paired comparison: seeds agree in sign and the mean is clear.

With ``d_s = a_s - b_s`` the per-seed difference of two runs trained on the same seed, a comparison is
*decided* when there are at least :data:`MIN_SEEDS` seeds, every ``d_s`` has the same (non-zero) sign, and
``|mean(d)| > 2 * stdev(d) / sqrt(n)``; its direction is that sign. Otherwise it is "within noise".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

MIN_SEEDS = 3
Verdict = Literal["agrees", "disagrees", "within noise"]
AGREES: Verdict = "agrees"
DISAGREES: Verdict = "disagrees"
WITHIN_NOISE: Verdict = "within noise"


@dataclass(frozen=True)
class Paired:
    """The paired per-seed differences ``a_s - b_s`` of a comparison, summarised."""

    differences: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.differences) if self.differences else math.nan

    @property
    def stderr(self) -> float:
        """``stdev(d) / sqrt(n)`` (NaN below two seeds)."""
        return statistics.stdev(self.differences) / math.sqrt(self.n) if self.n >= 2 else math.nan

    @property
    def sign(self) -> int:
        """+1 or -1 when the rule decides the comparison, else 0."""
        d = self.differences
        if self.n < MIN_SEEDS or not all(math.isfinite(x) for x in d):
            return 0
        if not (all(x > 0 for x in d) or all(x < 0 for x in d)):
            return 0
        return int(math.copysign(1, self.mean)) if abs(self.mean) > 2 * self.stderr else 0


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """``a_s - b_s`` for runs paired by seed (``a[i]`` and ``b[i]`` trained on the same seed)."""
    if len(a) != len(b):
        raise ValueError(f"paired runs need one value per seed on both sides, got {len(a)} and {len(b)}")
    return Paired(tuple(float(x) - float(y) for x, y in zip(a, b, strict=True)))


def verdict(diff: Paired, expected: int) -> Verdict:
    """Against the direction ``expected`` (+1: a above b, -1: a below b, 0: no difference): "agrees" when
    the rule decides that direction, "disagrees" when it decides another one (any, for 0), else
    "within noise" (for 0, the rule cannot confirm a tie: "within noise" is all it can say)."""
    if expected not in (1, -1, 0):
        raise ValueError(f"expected must be +1, -1 or 0, got {expected}")
    if diff.sign == 0:
        return WITHIN_NOISE
    return AGREES if diff.sign == expected else DISAGREES
