"""``benchmarks/gpu.sh --dry-run``: every benchmark the GPU session runs still runs.

A lent GPU comes for minutes, once in a while; a benchmark script that broke since (an API it calls moved)
would spend them on a traceback. The dry run is the same script on this CPU with tiny settings.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_every_part_of_the_gpu_script_runs_on_the_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
        check=False,
    )
    log = (tmp_path / "gpu-bench.txt").read_text(encoding="utf-8")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    started = re.findall(r"^== (.+?) \(limit \d+ s\): ", log, flags=re.M)
    assert len(started) >= 12 and "SD3 student" in started  # every part, the SD3 plugin's included
    ended = {name: re.findall(rf"^-- {re.escape(name)}: (.+)$", log, flags=re.M) for name in started}
    assert all(len(how) == 1 for how in ended.values()), ended
    failed = {name: how[0] for name, how in ended.items() if how[0].startswith("failed")}
    # a part stopped at its time limit (compiling on a slow CPU) is the machine's, not a broken script
    assert not failed, f"parts that failed: {failed}; see {tmp_path / 'gpu-bench.txt'}"
    assert re.search(r"^== done in \d+ s", log, flags=re.M)
