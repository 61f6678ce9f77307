"""``fieldkit plugin new NAME``: write the skeleton of a plugin package (fieldkit/templates/plugin)."""

from __future__ import annotations

import re
from importlib import metadata, resources
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template

import click

from fieldkit.atomic import atomic_path
from fieldkit.errors import FieldkitError
from fieldkit.plugins.manager import BUILTIN_NAME, ENTRY_POINT_GROUP

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
    _check_free(name, words["dist"])
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


def _check_free(name: str, dist: str) -> None:
    """Refuse ``name`` where its plugin would never load (fieldkit's own name) or would clash with an
    installed plugin: one with that entry-point name (one of the two would be ignored), or the
    distribution ``dist`` (installing the new one would replace it)."""
    if name == BUILTIN_NAME:
        raise FieldkitError(
            f"{name!r} is fieldkit's own plugin name: a plugin of that name would never load",
            hint="choose another NAME: myfield",
        )
    taken = next(iter(metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)), None)
    if taken is not None:
        owner = taken.dist.name if taken.dist is not None else "another distribution"
        raise FieldkitError(
            f"{name!r} is the name of an installed plugin (the entry point of {owner}): of two plugins with "
            "one name, one is ignored",
            hint=f"choose another NAME, or `pip uninstall {owner}` first if you mean to replace it",
        )
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return
    raise FieldkitError(
        f"{dist} is installed: installing the new {dist} would replace it",
        hint=f"choose another NAME, or `pip uninstall {dist}` first if you mean to replace it",
    )


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
    test file that trains a tiny student from YAML with all of them. `pip install -e .` installs it. NAME
    cannot be fieldkit or the name of an installed plugin."""
    folder = write_skeleton(name, out)
    click.echo(f"wrote {folder}; next: pip install -e {folder} && python -m pytest {folder / 'tests'}")
