"""The command line starts without torch: registering every installed plugin (fieldkit's own, the shipped
ones and the tests' third-party plugins) imports no torch, and neither do ``fieldkit --help`` and
``fieldkit validate``. benchmarks/cli_startup.py times the same commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fieldkit.plugins.manager import ALLOW_ENV

ROOT = Path(__file__).resolve().parent.parent

# Loads each allowed entry point in turn and names the first whose import or registration pulls torch.
REGISTER_EACH = """
import sys
from importlib import metadata
from fieldkit import builtin
from fieldkit.plugins.manager import ENTRY_POINT_GROUP, PluginHost
host = PluginHost()
host.register(builtin, "fieldkit")
host.registry, host.commands()
assert "torch" not in sys.modules, "fieldkit's own registration imports torch"
for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
    try:
        plugin = ep.load()
    except Exception:
        continue  # the broken test plugin: reported by the host, not this test's concern
    host.register(plugin, ep.name)
    host.registry, host.commands()
    if "torch" in sys.modules:
        print("torch imported by plugin", ep.name)
        break
    print("ok", ep.name)
"""


def python(code: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in a fresh process that loads every installed plugin, with ``paths`` on its path."""
    env = {k: v for k, v in os.environ.items() if k != ALLOW_ENV}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_registering_every_installed_plugin_imports_no_torch(plugin_site):
    proc = python(REGISTER_EACH, plugin_site)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert not [line for line in lines if line.startswith("torch")], lines
    assert {"ok example", "ok tempered"} <= set(lines)


def test_help_and_validate_with_every_plugin_import_no_torch(plugin_site):
    graph = ROOT / "examples" / "quickstart" / "graph.yaml"
    for args in (["--help"], ["validate", str(graph)]):
        code = (
            "import sys\nfrom fieldkit.cli import cli\n"
            f"try:\n    cli({args!r}, prog_name='fieldkit')\nexcept SystemExit as exit:\n"
            "    assert not exit.code, exit.code\n"
            "print('torch' in sys.modules)\n"
        )
        proc = python(code, plugin_site)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[-1] == "False", args
