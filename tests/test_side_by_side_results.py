"""benchmarks/side_by_side_results.py: the statistics of the side-by-side benchmark (sign tests, the median's
order-statistic interval, the test over runs), its results file and command, and docs/performance.md's
section 11, which must show the committed runs whole and the summary the command prints from them."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "side_by_side_results.py"
HEADER = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d  \d+ cores", flags=re.M)
ROW = "| {n} | 1.0 | 0.2 | 0.1 | 2.00 | 0.2 | 0.1 | {cpu:.2f} | 419 / 447 | {launch} | {exit} |"


@pytest.fixture(scope="module")
def results():
    spec = importlib.util.spec_from_file_location("side_by_side_results", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _run(results, cpus, launch="6.00 / 5.00", exit_="1.50 / 1.20", fieldkit_set=()):
    rows = [ROW.format(n=i + 1, cpu=c, launch=launch, exit=exit_) for i, c in enumerate(cpus)]
    return results.record("2026-12-08 01:00  made up", list(fieldkit_set), rows, [{"round": i} for i in cpus])


def test_the_sign_test_is_the_binomial_tail(results) -> None:
    assert results.sign_test(10, 0) == results.sign_test(0, 10) == 2 / 2**10
    assert results.sign_test(5, 5) == 1.0 and results.sign_test(0, 0) == 1.0
    assert results.sign_test(24, 7) == pytest.approx(2 * sum(math.comb(31, i) for i in range(8)) / 2**31)


@pytest.mark.parametrize("n", range(1, 61))
def test_the_median_interval_is_the_widest_k_the_level_allows(results, n: int) -> None:
    """k is the largest with 2 P(Binomial(n, 1/2) <= k - 1) <= 1 - level (scipy's binomial, not the module's
    sums); the interval is the k-th smallest and the k-th largest value."""
    alpha = 1 - results.LEVEL
    admissible = [k for k in range(1, n // 2 + 1) if 2 * binom.cdf(k - 1, n, 0.5) <= alpha]
    values = [float(v) for v in np.random.default_rng(n).permutation(n)]  # 0 .. n-1, shuffled
    got = results.median_interval(values)
    if not admissible:
        assert got is None
    else:
        k = max(admissible)
        assert got == (k - 1, n - k)
        assert 2 * binom.cdf(k, n, 0.5) > alpha or k == n // 2  # k + 1 would not hold the level


def test_the_median_interval_covers_the_median_at_its_level(results) -> None:
    """4000 samples of 15 from an exponential distribution (median ln 2): the interval holds the median in
    at least its level of them (its exact coverage at n = 15 is 0.9926)."""
    rng = np.random.default_rng(0)
    samples = rng.exponential(size=(4000, 15))
    held = 0
    for sample in samples:
        interval = results.median_interval(sample.tolist())
        assert interval is not None
        held += interval[0] <= math.log(2) <= interval[1]
    assert held / len(samples) >= results.LEVEL


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=8, max_size=80))
def test_the_median_interval_holds_the_sample_median(results, values: list[float]) -> None:
    interval = results.median_interval(values)
    assert interval is not None
    lo, hi = interval
    assert min(values) <= lo <= float(np.median(values)) <= hi <= max(values)


def test_a_row_without_its_eleven_cells_is_refused(results) -> None:
    with pytest.raises(ValueError, match="11 cells, this one 10"):
        results.parse_row("| 1 | 1.0 | 0.2 | 0.1 | 2.00 | 0.2 | 0.1 | 2.10 | 419 / 447 | 6.0 / 5.0 |")
    with pytest.raises(ValueError):
        results.record(
            "header", [], ["| 1 | 1.0 | 0.2 | 0.1 | 2.00 | 0.2 | 0.1 | x | 1 / 2 | 6 / 5 | 1 / 2 |"], []
        )
    row = results.parse_row(ROW.format(n=1, cpu=2.5, launch="6.00 / 5.25", exit="1.5 / 1.25"))
    assert row == results.Round(2.5, (6.0, 5.25), (1.5, 1.25))


def test_a_runs_row_gives_its_medians_and_sign_tests(results) -> None:
    run = _run(results, [2.1] * 9 + [1.9] * 2, launch="6.00 / 5.00", exit_="1.20 / 1.50")
    row = results.run_row(run)
    assert row.startswith("| 2026-12-08 01:00 | default | 11 | mean | 2.10 (")
    assert f"9 / 2, p = {results.sign_test(9, 2):.2g}" in row
    assert "| +1.00 (1.00 to 1.00); 11 / 0" in row and "| -0.30 (-0.30 to -0.30); 0 / 11" in row


def test_the_test_over_runs_counts_each_runs_median(results) -> None:
    runs = [_run(results, [2.2, 2.1, 1.5]) for _ in range(6)] + [_run(results, [1.9, 1.8, 2.5])]
    in_ticks = {**_run(results, [1.0, 1.0, 1.0]), "cpu_per_step": results.MEDIAN}  # not counted
    last = results.summary_lines([in_ticks, *runs])[-1]
    assert last.startswith("over runs (the 7 with CPU s/step as a mean; the others' ratios move in ticks): ")
    assert "above 2.00 in 6, below in 1, level in 0 of 7 runs" in last
    assert f"p = {results.sign_test(6, 1):.2g};" in last and "the level for 3 goals is 0.017" in last


def test_runs_are_appended_one_line_each(results, tmp_path: Path) -> None:
    path = tmp_path / "new" / "runs.jsonl"
    first, second = _run(results, [2.1]), _run(results, [1.9], fieldkit_set=["run.grid_samples=0"])
    results.append_run(path, first)
    results.append_run(path, second)
    assert results.read_runs(path) == [first, second]
    assert len(path.read_text().splitlines()) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json\n", "is not a side-by-side results file (ValueError: "),
        ('{"header": "h"}\n', "is not a side-by-side results file (KeyError: "),
        ("\n", "holds no runs"),
        (None, "is not a side-by-side results file (FileNotFoundError: "),
    ],
)
def test_a_bad_results_file_is_one_clear_error(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "runs.jsonl"
    if content is not None:
        path.write_text(content)
    result = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True)
    assert result.returncode != 0 and result.stdout == ""
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_page_shows_the_committed_runs_and_their_summary(results) -> None:
    """docs/performance.md, section 11: every per-round table there is a committed run, shown whole (its own
    header before it, the sign-test lines the script printed for it after); the 33-round runs of the
    results file are all shown; and the summary is what ``side_by_side_results.py`` prints from the file."""
    page = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    section = page[page.index("## 11. Against the authors' release") : page.index("## 12. A profiled step")]
    runs = {"\n".join(run["rows"]) + "\n": run for run in results.read_runs(results.DEFAULT_FILE)}
    # the script's per-round rows: a round number and ten more cells (benchmarks/exit_cost.py's have two)
    tables = re.findall(r"(?:^\| \d+ \|(?:[^|\n]*\|){10}\n)+", section, flags=re.M)
    assert set(tables) <= set(runs) and len(set(tables)) == len(tables)
    assert {t for t, run in runs.items() if len(run["rows"]) == 33} <= set(tables)
    for table in tables:
        header = runs[table]["header"]
        before = section[: section.index(table)]
        assert header in before  # the run's own header is the last one before its table
        assert not HEADER.search(before[before.rindex(header) + len(header) :])
        lines = results.sign_lines(runs[table]["rows"])
        assert len(lines) == 3 and all(line in section for line in lines), lines
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() in section
