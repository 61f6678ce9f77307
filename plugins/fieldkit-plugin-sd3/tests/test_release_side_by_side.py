"""benchmarks/release_side_by_side.py: its skip path and the two configurations it writes (same settings;
the graph validates; the release's own loader accepts its config where the release is installed)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fieldkit import loads_graph

ROOT = Path(__file__).parents[3]
SCRIPT = ROOT / "benchmarks" / "release_side_by_side.py"


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports its neighbour sd3.py
    try:
        spec = importlib.util.spec_from_file_location("release_side_by_side", SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPT.parent))
        sys.modules.pop("release_side_by_side", None)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FIELDKIT_RELEASE_PYTHON"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env)


def test_without_the_release_it_says_so_and_exits_0() -> None:
    result = _run()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("skipped: the authors' release is not given; pass --release-python")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--release-python", "/nonexistent/bin/python"], "is not an executable"),
        (
            ["--release-python", sys.executable, "--fieldkit-python", "/nonexistent/bin/python"],
            "--fieldkit-python /nonexistent/bin/python is not an executable",
        ),
        (["--release-python", sys.executable, "--steps", "3"], "--steps >= --drop + 3"),
    ],
)
def test_bad_options_are_one_clear_error(args: list[str], message: str) -> None:
    result = _run(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_both_configurations_have_the_same_settings_and_the_graph_validates(
    script, sd3_plugin, tmp_path: Path
) -> None:
    release_file, graph_file = script.write_configs(tmp_path, steps=7, t5_tokens=64)
    release = yaml.safe_load(release_file.read_text())
    graph = loads_graph(graph_file.read_text())
    training = release["training"]
    spec = graph.spec
    assert release["backend"] == "sd35" and release["model"]["pretrained_model"] == str(tmp_path / "sd3")
    assert training["max_train_steps"] == spec.run.steps == 7
    assert training["log_every"] == spec.run.log_every == 1
    assert training["rollout_steps"] == spec.flow.steps == 16 and spec.flow.schedule == "auto"
    assert training["k"] == graph.method.params.k == 1 and training["grad_accum"] == spec.run.grad_accum == 1
    assert training["lr"] == spec.run.lr and training["gradient_clip"] == spec.run.grad_clip
    assert training["mixed_precision"] == "no" and spec.run.precision == "fp32"
    assert release["student"]["lora_rank"] == spec.student.lora.rank == 4
    assert release["student"].get("lora_target_modules") is None  # the release's default: SD3's 8 projections
    data = graph.datasets["t2i"].params
    assert training["max_sequence_length"] == data.max_sequence_length == 64
    assert release["data"]["prompts_csv"] == str(tmp_path / "prompts.csv")
    assert Path(str(data.file)) == tmp_path / "prompts.csv"
    assert training["resolution"] // 8 == data.shape[-1]  # the release's latents: resolution / 8


def test_fieldkit_is_checked_before_it_runs(script) -> None:
    """This interpreter runs fieldkit; a check that fails names its last line of stderr."""
    assert script.check_fieldkit(sys.executable) is None
    failing = [sys.executable, "-c", "import sys; print('ok'); sys.exit('no fieldkit here')"]
    assert script.problem(failing, dict(os.environ)) == "no fieldkit here"


@pytest.mark.skipif(not os.environ.get("FIELDKIT_RELEASE_PYTHON"), reason="set FIELDKIT_RELEASE_PYTHON")
def test_the_release_accepts_its_config_key_by_key(script, tmp_path: Path) -> None:
    release_file, _ = script.write_configs(tmp_path, steps=7, t5_tokens=64)
    assert script.check_release(os.environ["FIELDKIT_RELEASE_PYTHON"], release_file) is None
    release_file.write_text(release_file.read_text().replace("lora_rank:", "lora_rnak:"))
    problem = script.check_release(os.environ["FIELDKIT_RELEASE_PYTHON"], release_file)
    assert problem == "keys the release does not know: student.lora_rnak"


def test_the_committed_rows_are_what_the_script_computes_from_their_marks(script) -> None:
    """Every run of the results file measured with the mean: each printed row's CPU ratio, launch and exit
    are what ``Run`` gives from that round's kept marks (3 steps dropped, as the runs were made)."""
    from side_by_side_results import DEFAULT_FILE, MEAN, parse_row, read_runs

    runs = [run for run in read_runs(DEFAULT_FILE) if run["cpu_per_step"] == MEAN]
    assert runs
    for run in runs:
        assert len(run["rounds"]) == len(run["rows"])
        for marks, row in zip(run["rounds"], run["rows"], strict=True):
            rel, fk = (
                script.Run(0.0, [tuple(m) for m in marks[n]["steps"]], marks[n]["exit"])
                for n in ("release", "fieldkit")
            )
            printed = parse_row(row)
            assert printed.cpu_ratio == pytest.approx(rel.cpu_per_step(3) / fk.cpu_per_step(3), abs=0.006)
            assert printed.launch == pytest.approx((rel.to_first_step, fk.to_first_step), abs=0.006)
            assert printed.exit == pytest.approx((rel.after_last_step, fk.after_last_step), abs=0.006)


def test_a_results_path_that_is_not_a_results_file_is_refused_before_any_round(tmp_path: Path) -> None:
    """A folder, a symlink or a file the script did not write: one error before the rounds, the file as it
    was. A missing file, or one the script wrote, is taken."""
    foreign = tmp_path / "notes.txt"
    foreign.write_text("my own notes\n")
    (tmp_path / "link.jsonl").symlink_to(foreign)
    for path, why in (
        (tmp_path, "is not a regular file"),
        (tmp_path / "link.jsonl", "is not a regular file"),
        (foreign, "is not a side-by-side results file (ValueError: "),
    ):
        result = _run("--release-python", sys.executable, "--results", str(path))
        assert result.returncode == 2 and f"--results {path} {why}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert foreign.read_text() == "my own notes\n"
    from side_by_side_results import DEFAULT_FILE, results_problem

    assert results_problem(tmp_path / "new.jsonl") is None and results_problem(DEFAULT_FILE) is None
