"""The side-by-side benchmark's results (``release_side_by_side.py``): each run's per-round rows as it printed
them, kept one run per line of a JSON-lines file, and the tests drawn from them.

    python benchmarks/side_by_side_results.py [benchmarks/results/release_side_by_side.jsonl]

A run's line holds its header (date, machine, settings) and its rows, verbatim. Each row gives the round's
CPU ratio (release / fieldkit CPU seconds per step, medians of the round) and the seconds from launch to the
end of step 1 and from the last step to the exit, release / fieldkit. Per run it prints the sign tests of
the three goals of issue 26 (the CPU ratio against 2.0, fieldkit sooner at launch, sooner at the exit) and
a distribution-free interval for each median: the order statistics that a sign test at the same level does
not reject, at 1 - 0.05 / 3 (three goals tested). Then over runs: a run's rounds share the machine's state
in that hour, so the runs themselves are the units of the last test, the per-round median CPU ratio of each
run against 2.0, counting the runs whose CPU seconds per step are means (``MEAN``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GOAL = 2.0  # the release / fieldkit CPU ratio per step that issue 26 asks for
CLAIMS = 3  # the goals tested per run: the CPU ratio, the launch and the exit
LEVEL = 1 - 0.05 / CLAIMS
#: How a run's rows give CPU seconds per step: the total over the kept steps by their number (``MEAN``), or,
#: in the runs before 2026-12-08, the median of the steps, each a whole number of the kernel's 4 ms ticks
#: (``MEDIAN``: a round's ratio moves in steps of ~5% and its median can sit a tick off the mean).
MEAN, MEDIAN = "mean over the kept steps", "median of the steps, in whole ticks"
DEFAULT_FILE = Path(__file__).resolve().parent / "results" / "release_side_by_side.jsonl"


@dataclass(frozen=True)
class Round:
    """What one printed row of the per-round table says: the CPU ratio, and (release, fieldkit) seconds from
    launch to the end of step 1 and from the last step to the exit."""

    cpu_ratio: float
    launch: tuple[float, float]
    exit: tuple[float, float]


def parse_row(row: str) -> Round:
    """A per-round row as printed (11 cells: round, load, wall and CPU seconds with their ratios, RSS, launch,
    exit)."""
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    if len(cells) != 11:
        raise ValueError(f"a per-round row has 11 cells, this one {len(cells)}: {row!r}")
    launch, exit_ = (tuple(float(x) for x in cells[i].split("/")) for i in (9, 10))
    return Round(float(cells[7]), (launch[0], launch[1]), (exit_[0], exit_[1]))


def sign_test(above: int, below: int) -> float:
    """Two-sided sign test, levels left out: ``2 P(X <= min(above, below))``, ``X ~ Binomial(above + below,
    1/2)`` (capped at 1)."""
    n = above + below
    tail = sum(math.comb(n, i) for i in range(min(above, below) + 1))
    return min(1.0, 2 * tail / 2**n)


def median_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """The distribution-free interval for the median of ``values`` at ``level``: ``[x_(k), x_(n+1-k)]`` of
    the sorted values with the largest ``k`` whose ``2 P(Binomial(n, 1/2) <= k - 1) <= 1 - level`` (its
    coverage is at least ``level``); ``None`` when ``n`` is too small for any."""
    xs, n = sorted(values), len(values)
    k, tail = 0, 0.0
    while k < n // 2 and 2 * (tail + math.comb(n, k) / 2**n) <= 1 - level:
        tail += math.comb(n, k) / 2**n
        k += 1
    return None if k == 0 else (xs[k - 1], xs[n - k])


def sign_lines(rows: Sequence[str], goal: float = GOAL) -> list[str]:
    """Per-round sign tests from the per-round table's rows as printed: the CPU ratio against ``goal``, and
    whether fieldkit reached the end of step 1 and exited sooner than the release."""
    rounds = [parse_row(r) for r in rows]

    def line(what: str, more: str, less: str, counts: tuple[int, int]) -> str:
        m, n = counts
        return (
            f"per round, as printed: {what} {more} in {m}, {less} in {n}, level in "
            f"{len(rounds) - m - n} of {len(rounds)} rounds (two-sided sign test, levels left out: "
            f"p = {sign_test(m, n):.2g})"
        )

    launch, exit_ = (_gained([getattr(r, what) for r in rounds]) for what in ("launch", "exit"))
    return [
        line("CPU ratio", f"above {goal:.2f}", "below", _above_below([r.cpu_ratio for r in rounds], goal)),
        line("fieldkit at the end of step 1", "sooner", "later", _above_below(launch, 0.0)),
        line("fieldkit exited", "sooner", "later", _above_below(exit_, 0.0)),
    ]


def _above_below(values: Sequence[float], at: float) -> tuple[int, int]:
    """How many of ``values`` are above ``at``, and how many below (the sign test's counts)."""
    return sum(x > at for x in values), sum(x < at for x in values)


def _gained(pairs: Sequence[tuple[float, float]]) -> list[float]:
    """Release - fieldkit seconds of each (release, fieldkit) pair: above 0 where fieldkit was sooner."""
    return [rel - fk for rel, fk in pairs]


def record(
    header: str, fieldkit_set: Sequence[str], rows: Sequence[str], rounds: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """One run's line of the results file: its header and rows as printed, fieldkit's overrides, and each
    round's marks (``release_side_by_side.Run.raw``) from which the rows were printed."""
    for row in rows:
        parse_row(row)  # refuse a row the summary could not read
    return {
        "header": header,
        "fieldkit_set": list(fieldkit_set),
        "cpu_per_step": MEAN,
        "rows": list(rows),
        "rounds": list(rounds),
    }


def append_run(path: Path, run: dict[str, Any]) -> None:
    """Add ``run`` as one line at the end of the results file ``path`` (made with its folder if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(run) + "\n")


def read_runs(path: Path) -> list[dict[str, Any]]:
    """The runs of the results file ``path``, oldest first."""
    runs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {n}: not JSON ({exc.msg})") from None
    return runs


def _fmt(interval: tuple[float, float] | None, digits: int) -> str:
    return "n too small" if interval is None else f"{interval[0]:.{digits}f} to {interval[1]:.{digits}f}"


def _measured_as_mean(run: dict[str, Any]) -> bool:
    return bool(run.get("cpu_per_step", MEDIAN) == MEAN)


def run_row(run: dict[str, Any], goal: float = GOAL) -> str:
    """One run as a row of the summary table: its rounds' medians, their intervals and sign tests."""
    rounds = [parse_row(r) for r in run["rows"]]

    def cell(values: list[float], at: float, fmt: str) -> str:
        above, below = _above_below(values, at)
        return (
            f"{statistics.median(values):{fmt}} ({_fmt(median_interval(values), 2)}); {above} / {below}, "
            f"p = {sign_test(above, below):.2g}"
        )

    return (
        "| "
        + " | ".join(
            [
                run["header"][:16],
                " ".join(run["fieldkit_set"]) or "default",
                str(len(rounds)),
                "mean" if _measured_as_mean(run) else "median, in ticks",
                cell([r.cpu_ratio for r in rounds], goal, ".2f"),
                cell(_gained([r.launch for r in rounds]), 0.0, "+.2f"),
                cell(_gained([r.exit for r in rounds]), 0.0, "+.2f"),
            ]
        )
        + " |"
    )


def run_table(runs: Sequence[dict[str, Any]], goal: float = GOAL) -> list[str]:
    """The per-run table: what it holds, then a row per run (:func:`run_row`)."""
    return [
        f"per run: medians over its rounds with their {LEVEL:.1%} intervals (order statistics), and the sign "
        "tests (counts above / below, or sooner / later; levels left out); seconds are release - fieldkit, "
        "above 0 where fieldkit was sooner",
        "",
        f"| run | fieldkit outputs | rounds | CPU s/step of a round | CPU ratio (above / below {goal:.2f}) | "
        "launch to step 1, s (sooner / later) | last step to exit, s (sooner / later) |",
        "|---|---|---|---|---|---|---|",
        *(run_row(run, goal) for run in runs),
    ]


def over_runs(runs: Sequence[dict[str, Any]], goal: float = GOAL) -> str:
    """The test over runs: each run measured with the mean is one unit, its per-round median CPU ratio
    against ``goal``."""
    counted = [run for run in runs if _measured_as_mean(run)]
    medians = [statistics.median(parse_row(r).cpu_ratio for r in run["rows"]) for run in counted]
    above, below = _above_below(medians, goal)
    return (
        f"over runs (the {len(counted)} with CPU s/step as a mean; the others' ratios move in ticks): the "
        f"per-round median CPU ratio is above {goal:.2f} in {above}, below in {below}, level in "
        f"{len(medians) - above - below} of {len(medians)} runs (two-sided sign test, levels left out: "
        f"p = {sign_test(above, below):.2g}; the level for {CLAIMS} goals is {1 - LEVEL:.3f})"
    )


def summary_lines(runs: Sequence[dict[str, Any]], goal: float = GOAL) -> list[str]:
    """The summary of ``runs``: the per-run table, then the test over runs."""
    return [*run_table(runs, goal), "", over_runs(runs, goal)]


class ResultsError(ValueError):
    """A file that does not read as a side-by-side results file; the message says why."""


def load_runs(path: Path) -> list[dict[str, Any]]:
    """The runs of the results file ``path``, each checked to have what the summary reads; a
    :class:`ResultsError` if any does not (or the file cannot be read)."""
    try:
        runs = read_runs(path)
        run_table(runs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ResultsError(f"is not a side-by-side results file ({type(exc).__name__}: {exc})") from None
    return runs


def results_problem(path: Path) -> str | None:
    """Why ``--results path`` cannot take a run, or None: it is missing (it will be made), or a regular file
    that reads as a results file. Checked before a run, so that neither an hour of rounds nor a file the
    benchmark did not write is lost to a bad path."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        return "is not a regular file"
    try:
        load_runs(path)
    except ResultsError as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "file",
        nargs="?",
        type=Path,
        default=DEFAULT_FILE,
        help="a results file written by release_side_by_side.py --results (default: the committed one)",
    )
    args = p.parse_args(argv)
    try:
        runs = load_runs(args.file)
    except ResultsError as exc:
        sys.exit(f"error: {args.file} {exc}")
    if not runs:
        sys.exit(f"error: {args.file} holds no runs")
    print("\n".join(summary_lines(runs)))


if __name__ == "__main__":
    main()
