"""The start of ``fieldkit distill``: every seed the schema takes trains, and a start that fails frees its
folder (no lock left with a dead pid, no folder of its own left behind, a finished run never replaced)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli_run import DISTILL, files_under
from test_run_folders import invoke, one_line

from fieldkit.distill.rundir import LOCK


@pytest.fixture(name="graph")
def distill_graph(tmp_path: Path) -> Path:
    (tmp_path / "graph.yaml").write_text(DISTILL)
    return tmp_path / "graph.yaml"


@pytest.mark.parametrize("seed", [2**63 - 1, 2**64 // 1000])
def test_every_seed_the_schema_takes_trains(graph: Path, tmp_path: Path, seed: int) -> None:
    out = tmp_path / "run"
    result = invoke(
        "distill", str(graph), "--out", str(out), "--no-progress", "--set", f"run.seed={seed}",
        "--set", "run.steps=1", "--set", "run.grid_samples=0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "student" / "model.safetensors").is_file()


@pytest.mark.parametrize("key", ["run.seed", "fields.mixture.seed", "fields.init.seed"])
def test_a_seed_out_of_range_is_refused_before_anything_is_built(graph: Path, key: str) -> None:
    result = invoke("validate", str(graph), "--set", f"{key}={2**63}")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert key in one_line(result.output) and "less than 9223372036854775808" in one_line(result.output)


def test_a_start_that_fails_leaves_no_folder_of_its_own(graph: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    overflow = ("--set", "fields.mixture.std=1e300")
    result = invoke("distill", str(graph), "--out", str(out), "--no-progress", *overflow)
    assert result.exit_code == 2 and "OverflowError" in result.output, result.output
    assert not out.exists()


def test_a_resume_that_fails_releases_the_lock(graph: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = invoke("distill", str(graph), "--out", str(out), "--no-progress", "--set", "run.steps=2")
    assert first.exit_code == 0, first.output
    before = files_under(out / "checkpoints")
    changed = ("--set", "run.steps=4", "--set", "fields.init.config.depth=2")
    failed = invoke("distill", str(graph), "--out", str(out), "--no-progress", "--resume", "latest", *changed)
    assert failed.exit_code == 2 and "Traceback" not in failed.output, failed.output
    assert (out / LOCK).read_text() == ""  # released: no pid left for the next run to call crashed
    assert files_under(out / "checkpoints") == before
    again = invoke("distill", str(graph), "--out", str(out), "--no-progress", "--resume", "latest", *changed)
    assert "took over the lock" not in again.output


@pytest.mark.parametrize(
    ("out", "says"),
    [("~/runs/x", "does not expand"), ("runs/{other}", "{graph} and no other"), ("runs/a\nb", "line break")],
)
def test_out_is_checked_as_run_out_is(graph: Path, tmp_path: Path, out: str, says: str) -> None:
    for dry in ([], ["--dry-run"]):
        result = invoke("distill", str(graph), "--out", out, "--no-progress", *dry, cwd=tmp_path)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "--out" in result.output and says in one_line(result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.yaml"]


def test_out_fills_in_the_graph_name(graph: Path, tmp_path: Path) -> None:
    result = invoke(
        "distill", str(graph), "--out", "runs/{graph}-a", "--no-progress", "--set", "run.steps=1",
        "--set", "run.grid_samples=0", cwd=tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "graph-a" / "student").is_dir()


def test_a_dry_run_refuses_what_the_run_would_and_writes_nothing(graph: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = invoke("distill", str(graph), "--out", str(out), "--no-progress", "--set", "run.steps=2")
    assert first.exit_code == 0, first.output
    before = files_under(tmp_path)
    cases = [
        ([], "already holds a run"),  # a finished run, not resumed
        (["--resume", str(tmp_path / "nowhere")], "no such checkpoint folder"),
        (["--out", str(tmp_path / "run" / "metrics.jsonl")], "is a file"),
    ]
    for extra, says in cases:
        args = ["distill", str(graph), "--dry-run", "--no-progress", "--out", str(out), *extra]
        result = invoke(*args)
        assert result.exit_code == 2 and says in one_line(result.output), (extra, result.output)
    resumed = invoke("distill", str(graph), "--dry-run", "--out", str(out), "--resume", "latest")
    assert resumed.exit_code == 0 and "Nothing written" in resumed.output, resumed.output
    fresh = invoke("distill", str(graph), "--dry-run", "--out", str(tmp_path / "new"))
    assert fresh.exit_code == 0, fresh.output
    assert files_under(tmp_path) == before and not (tmp_path / "new").exists()
