"""docs/flux.md stays true: its memory tables are what benchmarks/flux_memory.py prints at ranks 16, 64 and
128 (slow: the script builds tiny pipelines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldkit.testing import memory_rows_missing, run_script

ROOT = Path(__file__).parents[3]
DOCS = ROOT / "docs" / "flux.md"


@pytest.mark.slow
@pytest.mark.parametrize("rank", [16, 64, 128])
def test_memory_tables_are_the_scripts_output(rank: int, capsys: pytest.CaptureFixture[str]) -> None:
    run_script(ROOT / "benchmarks" / "flux_memory.py", ["--rank", str(rank), "--adapters", "3"])
    missing = memory_rows_missing(capsys.readouterr().out, DOCS, 1 + 2 + 1 + 3)
    assert not missing, f"docs/flux.md is out of date; rerun benchmarks/flux_memory.py: {missing}"
