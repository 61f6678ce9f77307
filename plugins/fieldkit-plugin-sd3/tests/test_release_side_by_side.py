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
