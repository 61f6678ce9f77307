"""The verdict rule of a page of paired comparisons: a test at a stated level, an interval, Holm's correction.

With ``d_s = a_s - b_s`` the per-seed difference of two runs trained on the same seed, each comparison gets a
two-sided p-value for ``mean(d) = 0``:

- the paired t-test, ``t = mean(d) / (stdev(d) / sqrt(n))`` on ``n - 1`` degrees of freedom, or
- the exact sign-flip permutation test ``p = #{e in {-1, +1}^n : |mean(e d)| >= |mean(d)|} / 2^n`` (no
  normality assumed), once ``n`` allows it: when its smallest possible p-value, ``2 / 2^n``, is below the
  strictest level Holm can ask of the page, ``LEVEL / m`` (below ``n = 6`` it can never reach 0.05).

Holm's step-down procedure over the page's ``m`` comparisons controls the chance of deciding any true null
at ``LEVEL``: the k-th smallest p-value decides when it and every smaller one is below ``LEVEL / (m - j + 1)``
(its adjusted p-value ``max_{j <= k} min(1, (m - j + 1) p_(j))`` is below ``LEVEL``). A decided comparison's
direction is the sign of ``mean(d)``; beside it the rule prints the 95% interval ``mean(d) +- t_{0.975, n-1}
stdev(d) / sqrt(n)`` (not adjusted for the page). Fewer than :data:`MIN_SEEDS` seeds decide nothing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

LEVEL = 0.05
MIN_SEEDS = 3
Verdict = Literal["agrees", "disagrees", "within noise"]
AGREES: Verdict = "agrees"
DISAGREES: Verdict = "disagrees"
WITHIN_NOISE: Verdict = "within noise"


def t_two_sided_p(t: float, df: int) -> float:
    """``P(|T| >= |t|)`` for Student's t on ``df`` degrees of freedom, exactly (Abramowitz & Stegun 26.7.3-4:
    with ``c = cos(atan(|t| / sqrt(df)))``, ``P(|T| < |t|)`` is a finite sum of powers of ``c``)."""
    if df < 1:
        raise ValueError(f"the t distribution needs at least 1 degree of freedom, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:  # odd: (2 / pi) (theta + sin cos (1 + 2/3 c^2 + 2*4/(3*5) c^4 + ... up to c^(df-3)))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inside = 2 / math.pi * (theta + s * math.cos(theta) * total)
    else:  # even: sin (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ... up to c^(df-2))
        term = total = 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = s * total
    return min(1.0, max(0.0, 1.0 - inside))


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t on ``df`` degrees of freedom: ``P(|T| < q) = level``
    (4.303 for df = 2, 2.776 for df = 4), by bisection on :func:`t_two_sided_p`."""
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > 1 - level:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > 1 - level else (lo, mid)
    return (lo + hi) / 2


def sign_flip_p(differences: Sequence[float]) -> float:
    """The exact two-sided sign-flip permutation p-value of ``mean(d) = 0``: the share of the ``2^n`` sign
    patterns ``e`` with ``|sum(e d)| >= |sum(d)|`` (ties counted, with a relative tolerance of 1e-9)."""
    d = [abs(x) for x in differences]
    observed = abs(sum(differences))
    tol = 1e-9 * max(sum(d), 1e-300)
    hits = sum(
        abs(sum(e * x for e, x in zip(signs, d, strict=True))) >= observed - tol
        for signs in itertools.product((1, -1), repeat=len(d))
    )
    return hits / (1 << len(d))


def sign_flip_allowed(n: int, claims: int, level: float = LEVEL) -> bool:
    """Whether the sign-flip test can decide at the page's strictest Holm level: ``2 / 2^n < level / m``."""
    return n >= 1 and 2 / (1 << n) < level / max(claims, 1)


@dataclass(frozen=True)
class Paired:
    """The paired per-seed differences ``a_s - b_s`` of a comparison, summarised."""

    differences: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return math.fsum(self.differences) / self.n if self.differences else math.nan

    @property
    def stderr(self) -> float:
        """``stdev(d) / sqrt(n)`` (NaN below two seeds)."""
        if self.n < 2:
            return math.nan
        mean = self.mean
        return math.sqrt(math.fsum((x - mean) ** 2 for x in self.differences) / (self.n - 1) / self.n)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """``mean(d) +- t_q(n - 1) stdev(d) / sqrt(n)`` (NaN below two seeds)."""
        if self.n < 2:
            return (math.nan, math.nan)
        half = t_quantile(self.n - 1, level) * self.stderr
        return (self.mean - half, self.mean + half)

    def p_value(self, exact: bool) -> float:
        """The two-sided p-value of ``mean(d) = 0``: sign-flip (``exact``) or the paired t-test; 1 below
        :data:`MIN_SEEDS` seeds or with a non-finite difference (nothing is decided)."""
        d = self.differences
        if self.n < MIN_SEEDS or not all(math.isfinite(x) for x in d):
            return 1.0
        if exact:
            return sign_flip_p(d)
        if self.stderr == 0:
            return 1.0 if self.mean == 0 else 0.0
        return t_two_sided_p(self.mean / self.stderr, self.n - 1)


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """``a_s - b_s`` for runs paired by seed (``a[i]`` and ``b[i]`` trained on the same seed)."""
    if len(a) != len(b):
        raise ValueError(f"paired runs need one value per seed on both sides, got {len(a)} and {len(b)}")
    return Paired(tuple(float(x) - float(y) for x, y in zip(a, b, strict=True)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's adjusted p-values: ``max_{j <= k} min(1, (m - j + 1) p_(j))`` at each p's rank ``k``."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


@dataclass(frozen=True)
class Decision:
    """One comparison of a page under the rule: its test, p-value, Holm-adjusted p-value and verdict."""

    diff: Paired
    expected: int
    test: Literal["t", "sign-flip"]
    p: float
    adjusted: float
    verdict: Verdict

    @property
    def interval(self) -> tuple[float, float]:
        return self.diff.interval()


def _word(sign: int, expected: int) -> Verdict:
    """Against the direction ``expected`` (+1: a above b, -1: a below b, 0: no difference): "agrees" when
    the rule decides that direction, "disagrees" when it decides another one (any, for 0), else "within
    noise" (for 0 the rule cannot confirm a tie: "within noise" is all it can say)."""
    if expected not in (1, -1, 0):
        raise ValueError(f"expected must be +1, -1 or 0, got {expected}")
    if sign == 0:
        return WITHIN_NOISE
    return AGREES if sign == expected else DISAGREES


def decide(diffs: Sequence[Paired], expected: Sequence[int], level: float = LEVEL) -> list[Decision]:
    """The page's decisions: each comparison tested (sign-flip where :func:`sign_flip_allowed`, else t),
    Holm over all of them at ``level``, a decided comparison's direction the sign of its mean."""
    if len(diffs) != len(expected):
        raise ValueError(f"one expected direction per comparison, got {len(expected)} for {len(diffs)}")
    m = len(diffs)
    tests: list[Literal["t", "sign-flip"]] = [
        "sign-flip" if sign_flip_allowed(d.n, m, level) else "t" for d in diffs
    ]
    ps = [d.p_value(t == "sign-flip") for d, t in zip(diffs, tests, strict=True)]
    out = []
    for d, e, t, p, adj in zip(diffs, expected, tests, ps, holm(ps), strict=True):
        sign = int(math.copysign(1, d.mean)) if adj < level and d.mean != 0 else 0
        out.append(Decision(d, e, t, p, adj, _word(sign, e)))
    return out
