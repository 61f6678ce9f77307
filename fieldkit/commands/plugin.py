"""``fieldkit plugin new NAME``: write the skeleton of a plugin package (fieldkit/templates/plugin)."""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template

import click

from fieldkit.atomic import atomic_path
from fieldkit.errors import FieldkitError

#: A plugin name: the entry point's name and the prefix of its types (``NAME.flat``); the module is
#: ``fieldkit_NAME`` and the distribution ``fieldkit-plugin-NAME``.
NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


def write_skeleton(name: str, parent: Path) -> Path:
    """Write ``parent/fieldkit-plugin-NAME`` from the templates, whole or not at all, and return it."""
    if not NAME.fullmatch(name) or name.endswith("_") or "__" in name:
        raise FieldkitError(
            f"{name!r} is not a plugin name",
            hint="use lowercase letters, digits and single underscores, starting with a letter: myfield",
        )
    words = {"name": name, "module": f"fieldkit_{name}", "dist": f"fieldkit-plugin-{name.replace('_', '-')}"}
    out = parent / words["dist"]
    if out.exists() or out.is_symlink():
        raise FieldkitError(f"{out} already exists", hint="choose another NAME or --out folder")
    templates = resources.files("fieldkit") / "templates" / "plugin"
    with atomic_path(out, folder=True, what="plugin folder") as tmp:
        for target, source in _files(templates, "").items():
            path = tmp / target.replace("package", words["module"]).replace("test_plugin", f"test_{name}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(Template(source).substitute(words), encoding="utf-8")
    return out


def _files(folder: Traversable, prefix: str) -> dict[str, str]:
    """``{relative path without .tmpl: template text}`` for every template below ``folder``."""
    found: dict[str, str] = {}
    for entry in folder.iterdir():
        if entry.is_dir():
            found.update(_files(entry, f"{prefix}{entry.name}/"))
        elif entry.name.endswith(".tmpl"):
            found[prefix + entry.name.removesuffix(".tmpl")] = entry.read_text(encoding="utf-8")
    return found


@click.group(short_help="Write the skeleton of a new plugin.")
def plugin() -> None:
    """Tools for plugin authors."""


@plugin.command(name="new", short_help="Write the skeleton of a plugin package named NAME.")
@click.argument("name")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The folder to write fieldkit-plugin-NAME into.",
)
def new(name: str, out: Path) -> None:
    """Write fieldkit-plugin-NAME: a pyproject.toml with the entry point, a module registering one source,
    operator, data bucket, metric, router, method and command (its registration imports no torch), and a
    test file that trains a tiny student from YAML with all of them. `pip install -e .` installs it."""
    folder = write_skeleton(name, out)
    click.echo(f"wrote {folder}; next: pip install -e {folder} && python -m pytest {folder / 'tests'}")
