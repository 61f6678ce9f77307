"""docs/zimage.md stays true: its tables are what benchmarks/zimage_memory.py and benchmarks/schedules.py
print (slow: the scripts build and run tiny pipelines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldkit.testing import memory_rows_missing, run_script

ROOT = Path(__file__).parents[3]
DOCS = ROOT / "docs" / "zimage.md"


def script_output(name: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    run_script(ROOT / "benchmarks" / f"{name}.py", args)
    return capsys.readouterr().out


@pytest.mark.slow
def test_memory_tables_are_the_scripts_output(capsys: pytest.CaptureFixture[str]) -> None:
    out = script_output("zimage_memory", ["--rank", "128", "--adapters", "2"], capsys)
    missing = memory_rows_missing(out, DOCS, 1 + 2 + 1 + 3)
    assert not missing, f"docs/zimage.md is out of date; rerun benchmarks/zimage_memory.py: {missing}"


@pytest.mark.slow
def test_schedule_row_is_the_scripts_output(capsys: pytest.CaptureFixture[str]) -> None:
    out = script_output("schedules", ["--steps", "16"], capsys)
    rows = [line for line in out.splitlines() if line.startswith("| ZImagePipeline")]
    assert len(rows) == 1 and rows[0] in DOCS.read_text(encoding="utf-8")
