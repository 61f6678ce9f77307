"""``fieldkit plugin new NAME``: the skeleton it writes is a plugin package that passes its own tests, its
code is lint-clean whatever the name's length, and a bad name or an existing folder is one message, exit 2,
with nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_plugin_warnings import fake_distribution

from fieldkit.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def new(name: str, out: Path) -> Path:
    result = CliRunner().invoke(cli, ["plugin", "new", name, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out / f"fieldkit-plugin-{name.replace('_', '-')}"


def run(*args: str, cwd: Path, python: str = sys.executable, path: str = "") -> subprocess.CompletedProcess:
    """``python args`` in ``cwd`` with this checkout's fieldkit first on the path (and ``path`` after it)."""
    env = {k: v for k, v in os.environ.items() if k != "FIELDKIT_LOAD_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), path) if p)
    return subprocess.run([python, *args], cwd=cwd, capture_output=True, text=True, env=env, check=False)


def test_the_skeleton_writes_one_package_with_an_entry_point_and_tests(tmp_path):
    package = new("myfield", tmp_path)
    files = sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "fieldkit_myfield/__init__.py",
        "fieldkit_myfield/data.py",
        "fieldkit_myfield/fields.py",
        "fieldkit_myfield/py.typed",
        "fieldkit_myfield/training.py",
        "pyproject.toml",
        "tests/conftest.py",
        "tests/test_myfield.py",
    ]
    assert (
        '[project.entry-points.fieldkit]\nmyfield = "fieldkit_myfield"\n'
        in (package / "pyproject.toml").read_text()
    )
    assert not list(tmp_path.glob(".*"))  # no temporary folder left beside it


def test_the_skeleton_passes_its_own_tests(tmp_path):
    package = new("myfield", tmp_path)
    proc = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=package, path=str(package))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 passed, 1 skipped" in proc.stdout  # the entry-point test needs an install (the slow test below)


@pytest.mark.parametrize("name", ["x", "two_words", "a" * 40])
def test_the_skeleton_is_lint_clean_whatever_the_name(tmp_path, name):
    package = new(name, tmp_path)
    for args in (["check", "--no-cache", "."], ["format", "--no-cache", "--check", "."]):
        proc = run("-m", "ruff", *args, cwd=package)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["MyField", "1field", "my-field", "my__field", "field_", "", "a" * 41])
def test_a_bad_name_is_one_message_and_exit_2(tmp_path, name):
    result = CliRunner().invoke(cli, ["plugin", "new", name, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{name!r} is not a plugin name" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_left_untouched_and_exit_2(tmp_path):
    (tmp_path / "fieldkit-plugin-myfield").mkdir()
    (tmp_path / "fieldkit-plugin-myfield" / "mine.txt").write_text("keep")
    result = CliRunner().invoke(cli, ["plugin", "new", "myfield", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert [p.name for p in (tmp_path / "fieldkit-plugin-myfield").iterdir()] == ["mine.txt"]


@pytest.mark.parametrize(
    ("name", "message", "hint"),
    [
        (
            "fieldkit",
            "'fieldkit' is fieldkit's own plugin name: a plugin of that name would never load",
            "choose another NAME: myfield",
        ),
        (
            "acme",
            "'acme' is the name of an installed plugin (the entry point of fieldkit-plugin-anvil): of two "
            "plugins with one name, one is ignored",
            "choose another NAME, or `pip uninstall fieldkit-plugin-anvil` first if you mean to replace it",
        ),
        (
            "anvil",
            "fieldkit-plugin-anvil is installed: installing the new fieldkit-plugin-anvil would replace it",
            "choose another NAME, or `pip uninstall fieldkit-plugin-anvil` first if you mean to replace it",
        ),
    ],
)
def test_fieldkit_or_an_installed_plugins_name_is_refused_and_nothing_written(
    tmp_path, monkeypatch, name, message, hint
):
    fake_distribution(tmp_path / "site", "fieldkit-plugin-anvil", "[fieldkit]\nacme = fieldkit_acme\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(cli, ["plugin", "new", name, "--out", str(out)])
    assert result.exit_code == 2
    assert f"Error: {message}\n  hint: {hint}" in result.stderr
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_the_skeleton_installs_and_loads_through_its_entry_point(tmp_path):
    package = new("myfield", tmp_path / "src")
    site = tmp_path / "site"  # a real install (wheel, dist-info, entry point) beside the environment
    install = ["-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    proc = run(*install, "--target", str(site), str(package), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # Run from outside the source folder: the tests import the installed package through its entry point.
    tests = tmp_path / "tests"
    (package / "tests").rename(tests)
    proc = run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests), cwd=tmp_path, path=str(site))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "7 passed" in proc.stdout
