"""The distribution: its entry point, its registered types and commands, and no diffusers at import time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

from click.testing import CliRunner

from fieldkit.cli import cli


def test_the_entry_point_is_declared_by_the_installed_distribution() -> None:
    (ep,) = [ep for ep in metadata.entry_points(group="fieldkit") if ep.name == "sd3"]
    assert ep.value == "fieldkit_sd3"
    assert ep.dist is not None and ep.dist.name == "fieldkit-plugin-sd3"


def test_fieldkit_loads_the_plugin_through_its_entry_point_without_importing_diffusers() -> None:
    """A fresh process finds the plugin by its entry point and lists its types, and neither
    importing fieldkit nor loading the plugin imports diffusers, transformers or peft."""
    code = (
        "import sys, json\n"
        "import fieldkit, fieldkit.cli\n"
        "from fieldkit.plugins import get_host\n"
        "host = get_host()\n"
        "heavy = sorted(m for m in ('diffusers', 'transformers', 'peft') if m in sys.modules)\n"
        "print(json.dumps({'types': host.registry.by_plugin().get('sd3'), 'failures': [str(f) for f in "
        "host.failures], 'heavy': heavy}))\n"
    )
    env = {**os.environ, "FIELDKIT_LOAD_PLUGINS": "sd3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    report = json.loads(out.stdout)
    assert report["failures"] == []
    assert report["types"] == {"source": ["sd3", "sd3.lora"], "dataset": ["sd3.prompts"]}
    assert report["heavy"] == []


def test_plugins_command_lists_the_types_and_commands(sd3_plugin) -> None:
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    (info,) = [p for p in json.loads(result.output)["plugins"] if p["name"] == "sd3"]
    assert info["types"]["command"] == ["sd3-export-lora", "sd3-make-tiny"]
    assert info["version"] == "0.1.0"
