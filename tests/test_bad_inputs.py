"""A corpus of hostile inputs (graphs, --set values, model folders): each gets one clear error and exit
code 2, quickly and without growing memory, and a FIFO or a device is never read.

Tests that could hang on wrong code (a FIFO) run the real command in a subprocess whose timeout only keeps
CI from hanging; it is not a speed assertion.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldkit import load_graph, loads_graph
from fieldkit.cli import cli
from fieldkit.errors import CheckpointError, GraphError
from fieldkit.graph.yaml_source import MAX_BYTES, MAX_DEPTH
from fieldkit.models import MMDiT, MMDiTConfig, load_pretrained

FIELDKIT = Path(sys.executable).parent / "fieldkit"
# The "billion laughs" of YAML: nine levels of nine aliases each expand to 9**9 (387 M) strings.
ALIAS_BOMB = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)
GOOD = "fields:\n  t: {type: gaussian_mixture, classes: 3, shape: [1, 2, 2]}\n"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FIELDKIT_LOAD_PLUGINS": ""}
    return subprocess.run(
        [str(FIELDKIT), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- graphs ------------------------------------------------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path):
    assert len(ALIAS_BOMB) < 700
    before = max_rss_mb()
    with pytest.raises(GraphError, match="expands to more than") as err:
        loads_graph(ALIAS_BOMB)
    assert "aliases" in err.value.hint
    assert max_rss_mb() - before < 200
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    done = CliRunner().invoke(cli, ["validate", str(path)])
    assert done.exit_code == 2 and "expands to more than" in done.output and "Traceback" not in done.output


def test_an_alias_bomb_in_a_set_value_is_refused(tmp_path):
    bomb = ALIAS_BOMB.replace("\n", ", ").rstrip(", ")
    with pytest.raises(GraphError, match="expands to more than"):
        loads_graph(GOOD, [f"run.x={{{bomb}}}"])


def test_a_huge_graph_file_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(GOOD + "# " + "x" * MAX_BYTES + "\n")
    with pytest.raises(GraphError, match="allowed") as err:
        load_graph(path)
    assert f"{path.stat().st_size:,} bytes" in err.value.message


@pytest.mark.parametrize("depth", [MAX_DEPTH + 5, 200_000])
def test_deep_nesting_is_one_graph_error_not_a_recursion_error(depth):
    text = GOOD + "run: {x: " + "[" * depth + "]" * depth + "}\n"
    with pytest.raises(GraphError, match="nest"):
        loads_graph(text)


def test_a_graph_that_is_a_fifo_or_a_device_is_refused_and_never_read(tmp_path):
    fifo = tmp_path / "graph.yaml"
    os.mkfifo(fifo)
    done = run_cli("validate", str(fifo))
    assert done.returncode == 2 and "is a FIFO (named pipe), not a regular file" in done.stderr
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    with pytest.raises(GraphError, match="is a device, not a regular file"):
        load_graph(zero)


# -- model folders -----------------------------------------------------------------------------------------


def small_model(tmp_path: Path) -> Path:
    config = MMDiTConfig(hidden=16, heads=2, depth=2, text_dim=8, pooled_dim=8, frequency_dim=8)
    return MMDiT(config).save_pretrained(tmp_path / "model")


def test_a_config_far_larger_than_its_weights_is_refused_before_allocation(tmp_path):
    folder = small_model(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "depth": 256, "hidden": 1024, "heads": 4}))
    assert (folder / "model.safetensors").stat().st_size < 1 << 20
    before = max_rss_mb()
    with pytest.raises(CheckpointError, match=r"does not match its config\.json") as err:
        load_pretrained(folder)
    assert "holds" in err.value.message and "different models" in err.value.hint
    # The full model (256 blocks of width 1024, over three billion values) would take more than 12 GB.
    assert max_rss_mb() - before < 500


def test_a_config_json_that_is_a_fifo_or_a_device_is_refused(tmp_path):
    folder = small_model(tmp_path)
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="is a device, not a regular file"):
        load_pretrained(folder)
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    code = "import sys\nfrom fieldkit.models import load_pretrained\nload_pretrained(sys.argv[1])"
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0
    assert "CheckpointError" in done.stderr and "not a regular file" in done.stderr


def test_a_weights_file_that_is_a_device_is_refused(tmp_path):
    folder = small_model(tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="is a device, not a regular file"):
        load_pretrained(folder)


def test_a_huge_config_json_is_refused(tmp_path):
    folder = small_model(tmp_path)
    (folder / "config.json").write_text(" " * (2 << 20) + "{}")
    with pytest.raises(CheckpointError, match="allowed"):
        load_pretrained(folder)


@settings(max_examples=15, deadline=None)
@given(
    depth=st.integers(1, 5),
    heads=st.sampled_from([1, 2]),
    source=st.booleans(),
    classes=st.integers(0, 3),
)
def test_mmdit_counts_its_state_without_building_it(depth, heads, source, classes):
    config = MMDiTConfig(
        hidden=8, heads=heads, depth=depth, text_dim=4, pooled_dim=4, frequency_dim=4,
        use_source=source, num_classes=classes, sample_size=(4, 4),
    )  # fmt: skip
    real = sum(t.numel() for t in MMDiT(config).state_dict().values())
    assert MMDiT.state_numel(config) == real
    with torch.device("meta"):
        assert super(MMDiT, MMDiT).state_numel.__func__(MMDiT, config) == real  # the generic count
