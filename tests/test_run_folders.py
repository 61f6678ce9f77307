"""``fieldkit distill`` and its output folder: what it refuses (and leaves as it was), and a real second
``fieldkit distill`` process that holds the folder while another tries to write it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_cli_run import DISTILL, files_under

from fieldkit.cli import cli
from fieldkit.distill.rundir import LOCK

FIELDKIT = Path(sys.executable).parent / "fieldkit"


def invoke(*args: str, cwd: Path | None = None):
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(cli, list(args), prog_name="fieldkit")
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return runner.invoke(cli, list(args), prog_name="fieldkit")
    finally:
        os.chdir(old)


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    path = tmp_path / "graph.yaml"
    path.write_text(DISTILL)
    return path


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_an_unrelated_folder_is_refused_and_its_files_are_untouched(graph: Path, tmp_path: Path) -> None:
    user = tmp_path / "photos"
    (user / "student").mkdir(parents=True)
    (user / "student" / "me.txt").write_text("mine")
    (user / "graph.json").write_text('{"mine": true}')
    (user / "results.json").write_text("[]")
    before = files_under(user)
    for extra in ([], ["--resume", "latest"]):
        result = invoke("distill", str(graph), "--out", str(user), "--no-progress", *extra)
        assert result.exit_code == 2, result.output
        assert "not a fieldkit run folder" in one_line(result.output) and "Traceback" not in result.output
    assert files_under(user) == before and sorted(p.name for p in user.iterdir()) == sorted(
        ["student", "graph.json", "results.json"]
    )


def test_an_empty_out_and_an_out_that_is_a_file_are_user_errors(graph: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = invoke("distill", str(graph), "--out", "", "--no-progress", cwd=work)
    assert result.exit_code == 2 and "empty path" in result.output
    assert list(work.iterdir()) == []
    file = tmp_path / "out.txt"
    file.write_text("keep")
    for out in (file, file / "run"):
        result = invoke("distill", str(graph), "--out", str(out), "--no-progress")
        assert result.exit_code == 2 and "is a file" in result.output, result.output
    assert file.read_text() == "keep"


def test_a_write_that_fails_for_lack_of_space_is_a_user_error(graph: Path, tmp_path: Path) -> None:
    """A real write failure: the child may write files of at most 64 KiB (RLIMIT_FSIZE), so the first
    checkpoint cannot be written; the run stops with exit 2 and a message, not an "unexpected" error."""
    out = tmp_path / "run"
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))\n"
        "from fieldkit.cli import main\n"
        "sys.argv = ['fieldkit', 'distill', sys.argv[1], '--out', sys.argv[2], '--no-progress']\n"
        "main()\n"
    )
    env = {**os.environ, "FIELDKIT_LOAD_PLUGINS": ""}
    done = subprocess.run(
        [sys.executable, "-c", code, str(graph), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "cannot write the run" in done.stderr and "unexpected" not in done.stderr
    assert not list((out / "checkpoints").glob(".*.tmp"))  # the half-written checkpoint was removed


def test_a_second_run_cannot_write_a_folder_a_live_run_holds(graph: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # A long run that writes no checkpoint before it is killed, however fast the machine runs it.
    slow = graph.read_text().replace("steps: 4, batch_size", "steps: 100000, batch_size")
    slow = slow.replace("checkpoint_every: 2", "checkpoint_every: 100000")
    assert slow.count("100000") == 2
    slow_graph = tmp_path / "slow.yaml"
    slow_graph.write_text(slow)
    env = {**os.environ, "FIELDKIT_LOAD_PLUGINS": ""}
    first = subprocess.Popen(
        [str(FIELDKIT), "distill", str(slow_graph), "--out", str(out), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = out / LOCK
        for _ in range(600):  # until the first run holds the folder (CI timeout guard, not a speed check)
            if lock.is_file() and lock.read_text().strip() == str(first.pid):
                break
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.1)
        for extra in ([], ["--resume", "latest"]):
            result = invoke("distill", str(graph), "--out", str(out), "--no-progress", *extra)
            assert result.exit_code == 2, result.output
            assert f"in use by another fieldkit run (pid {first.pid})" in one_line(result.output)
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.kill()
        first.wait()
    # The first run was killed before any checkpoint: the folder restarts, with notes, and completes.
    result = invoke("distill", str(graph), "--out", str(out), "--no-progress", "--resume", "latest")
    assert result.exit_code == 0, result.output
    text = one_line(result.output)
    assert f"took over the lock of pid {first.pid}" in text
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 5))
