"""docs/qwenimage.md stays true: its memory tables are what benchmarks/qwenimage_memory.py prints at
ranks 16, 64 and 128 (slow: the script builds tiny pipelines)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]
DOCS = ROOT / "docs" / "qwenimage.md"


@pytest.mark.slow
@pytest.mark.parametrize("rank", [16, 64, 128])
def test_memory_tables_are_the_scripts_output(rank: int, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(
        "qwenimage_memory", ROOT / "benchmarks" / "qwenimage_memory.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--rank", str(rank), "--adapters", "3"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 1 + 1 + 3  # two tables: a header and one row per model
    measured = re.findall(r"[\d,]{6,} bytes", out)
    assert len(measured) == 2
    docs = DOCS.read_text(encoding="utf-8")
    missing = [row for row in [*rows, *measured] if row not in docs]
    assert not missing, f"docs/qwenimage.md is out of date; rerun benchmarks/qwenimage_memory.py: {missing}"
