"""docs/zimage.md stays true: its tables are what benchmarks/zimage_memory.py and benchmarks/schedules.py
print (slow: the scripts build and run tiny pipelines)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]
DOCS = ROOT / "docs" / "zimage.md"


def run_script(name: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(args)
    return capsys.readouterr().out


@pytest.mark.slow
def test_memory_tables_are_the_scripts_output(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_script("zimage_memory", ["--rank", "128", "--adapters", "2"], capsys)
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 2 + 1 + 3  # two tables: a header and one row per model
    measured = re.findall(r"[\d,]{6,} bytes", out)
    assert len(measured) == 2
    docs = DOCS.read_text(encoding="utf-8")
    missing = [row for row in [*rows, *measured] if row not in docs]
    assert not missing, f"docs/zimage.md is out of date; rerun benchmarks/zimage_memory.py: {missing}"


@pytest.mark.slow
def test_schedule_row_is_the_scripts_output(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_script("schedules", ["--steps", "16"], capsys)
    rows = [line for line in out.splitlines() if line.startswith("| ZImagePipeline")]
    assert len(rows) == 1 and rows[0] in DOCS.read_text(encoding="utf-8")
