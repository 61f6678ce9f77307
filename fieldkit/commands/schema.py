"""``fieldkit schema``: the JSON schema of graph files, built from the registered types, for editors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from fieldkit.atomic import atomic_write
from fieldkit.errors import FieldkitError
from fieldkit.files import check_replaceable, read_text
from fieldkit.graph.json_schema import graph_schema
from fieldkit.plugins.manager import get_host

MAX_SCHEMA = 64 << 20  # bytes of an old schema read to tell whether it is one (today's is about 130 kB)


@click.command(short_help="Print the JSON schema of graph files, for editors.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the schema to FILE instead of standard output.",
)
def schema(output: Path | None) -> None:
    """Print the JSON schema of a graph file (draft 2020-12).

    Every `type:` in a graph is checked against the types the loaded plugins register, with each type's
    own parameters. Point your editor's YAML support at the file, e.g. in VS Code:
    `# yaml-language-server: $schema=graph.schema.json` as the graph's first line.
    """
    written = graph_schema(get_host().registry)
    text = json.dumps(written, indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    check_replaceable(output, "graph schema", lambda path: _same_kind(path, written))
    atomic_write(output, text)
    click.echo(f"wrote {output}", err=True)


def _same_kind(path: Path, schema: dict[str, Any]) -> bool:
    """Whether the file ``path`` is a graph schema fieldkit wrote: JSON with the dialect and title of
    ``schema``."""
    try:
        old = json.loads(read_text(path, MAX_SCHEMA, "graph schema"))
    except (FieldkitError, ValueError):
        return False
    return isinstance(old, dict) and all(old.get(key) == schema[key] for key in ("$schema", "title"))
