"""The distribution: its entry point, its registered types and commands, and no diffusers at import time."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from click.testing import CliRunner

from fieldkit.cli import cli
from fieldkit.testing import assert_make_tiny_refuses, entry_point_report


def test_the_entry_point_is_declared_by_the_installed_distribution() -> None:
    (ep,) = [ep for ep in metadata.entry_points(group="fieldkit") if ep.name == "sd3"]
    assert ep.value == "fieldkit_sd3"
    assert ep.dist is not None and ep.dist.name == "fieldkit-plugin-sd3"


def test_fieldkit_loads_the_plugin_through_its_entry_point_without_importing_diffusers() -> None:
    """A fresh process finds the plugin by its entry point and lists its types, and neither
    importing fieldkit nor loading the plugin imports diffusers, transformers or peft."""
    report = entry_point_report("sd3")
    assert report["failures"] == []
    assert report["types"] == {"source": ["sd3", "sd3.lora"], "dataset": ["sd3.prompts"]}
    assert report["heavy"] == []


def test_plugins_command_lists_the_types_and_commands(sd3_plugin) -> None:
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    (info,) = [p for p in json.loads(result.output)["plugins"] if p["name"] == "sd3"]
    assert info["types"]["command"] == ["sd3-make-tiny"]
    assert info["version"] == "0.1.0"


def test_make_tiny_refuses_a_folder_with_files_and_a_seed_torch_cannot_take(
    sd3_plugin, tmp_path: Path
) -> None:
    assert_make_tiny_refuses(cli, "sd3-make-tiny", tmp_path, "sd3")
