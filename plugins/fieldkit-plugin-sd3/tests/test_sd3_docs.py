"""docs/sd3.md stays true: its memory tables are what benchmarks/sd3_memory.py prints."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]


def test_memory_tables_are_the_scripts_output(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("sd3_memory", ROOT / "benchmarks" / "sd3_memory.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--rank", "64", "--adapters", "2"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3 + 1 + 3  # two tables: a header and one row per model
    measured = re.findall(r"[\d,]{6,} bytes", out)
    assert len(measured) == 2  # the tiny models' shared and copied parameter bytes
    docs = (ROOT / "docs" / "sd3.md").read_text(encoding="utf-8")
    missing = [row for row in [*rows, *measured] if row not in docs]
    assert not missing, f"docs/sd3.md is out of date; rerun benchmarks/sd3_memory.py: {missing}"


@pytest.mark.slow
def test_schedule_table_is_the_scripts_output(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("schedules", ROOT / "benchmarks" / "schedules.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--steps", "16"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| StableDiffusion3Pipeline |")
    docs = (ROOT / "docs" / "sd3.md").read_text(encoding="utf-8")
    assert rows[0] in docs and rows[1] in docs  # the header and the SD3 row
