"""``fieldkit schema``: the JSON schema of graph files, built from the registered types, for editors."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fieldkit.atomic import atomic_write
from fieldkit.graph.json_schema import graph_schema
from fieldkit.plugins.manager import get_host


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
    text = json.dumps(graph_schema(get_host().registry), indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    atomic_write(output, text)
    click.echo(f"wrote {output}", err=True)
