"""``fieldkit plugins``: the loaded plugins, what each registers, and the ones that failed."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import click

from fieldkit.plugins.manager import ALLOW_ENV, get_host


@click.command(short_help="List plugins and the types and commands they register.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List plugins: name, version, hooks, and the types and commands each registers.

    Plugins that failed to load or register are listed by name, with the error; fieldkit keeps working
    without them. Problems name clashes that lose a plugin, command or type: two installed distributions
    with one entry-point name (or one named fieldkit), a command named like one of fieldkit's, a type name
    two plugins register. Warnings name mistakes that lose a plugin silently: a fieldkit_* function without
    @hookimpl, a hook that registered nothing, an installed fieldkit-plugin-* without a fieldkit entry
    point, a FIELDKIT_LOAD_PLUGINS name that matches nothing. FIELDKIT_LOAD_PLUGINS=a,b limits which
    installed plugins load (empty: none).

    Exits 0 whenever it can list, failures or not (it is the report of them, and every other command keeps
    working without a broken plugin): a script checks the "failures" and "problems" lists of --json.
    """
    host = get_host()
    infos = host.plugins()
    problems = host.problems()
    warnings = host.warnings()
    allowed = os.environ.get(ALLOW_ENV)
    if as_json:
        out = {
            "plugins": [asdict(info) for info in infos],
            "failures": [asdict(failure) for failure in host.failures],
            "problems": problems,
            "warnings": [asdict(warning) for warning in warnings],
            "load_plugins": allowed,
        }
        click.echo(json.dumps(out, indent=2))
        return

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Everything below but fieldkit's own words comes from plugins: escaped, so that `x[cuda]` is printed
    # as written and `[/data]` is not read as a closing tag.
    console = Console(highlight=False, soft_wrap=False)
    table = Table(title="fieldkit plugins", title_justify="left")
    for column in ("name", "version", "hooks", "registers"):
        table.add_column(column)
    for info in infos:
        hooks = ", ".join(h.removeprefix("fieldkit_register_") for h in info.hooks)
        types = "\n".join(f"{kind}: {', '.join(names)}" for kind, names in info.types.items())
        table.add_row(*map(escape, (info.name, info.version, hooks, types)))
    console.print(table)
    for failure in host.failures:
        console.print(f"[red]failed: {escape(failure.name)}[/red] ({failure.stage}): {escape(failure.error)}")
    for problem in problems:
        console.print(f"[yellow]problem:[/yellow] {escape(problem)}")
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(str(warning))}")
    if allowed is not None:
        console.print(f"{ALLOW_ENV}={escape(repr(allowed))}: only the installed plugins it names are loaded")
