"""The ``fieldkit`` command line: a click group with fieldkit's commands and the commands plugins add.

Each command lives in its own small module under :mod:`fieldkit.commands`; a command that takes a graph
uses :func:`fieldkit.commands.options.graph_options`, so ``GRAPH`` and ``--set`` read the same everywhere.
A :class:`~fieldkit.errors.FieldkitError` is printed as one message (what is wrong, and a hint) and exits
with code 2; any other error exits with code 1. Tracebacks are shown only with ``--debug``.
"""

from __future__ import annotations

import atexit
import gc
import os
import traceback
from typing import Any

import click

from fieldkit import __version__
from fieldkit.commands.distill import distill
from fieldkit.commands.evaluate import evaluate
from fieldkit.commands.export import export
from fieldkit.commands.merge import merge
from fieldkit.commands.options import graph_options
from fieldkit.commands.plugin import plugin
from fieldkit.commands.plugins import plugins
from fieldkit.commands.report import report
from fieldkit.commands.sample import sample
from fieldkit.commands.schema import schema
from fieldkit.commands.train import train
from fieldkit.commands.validate import validate
from fieldkit.errors import FieldkitError, GraphError
from fieldkit.owned import write_error
from fieldkit.plugins.manager import get_host, reserve_commands
from fieldkit.quiet import drop_unactionable_messages

__all__ = ["cli", "graph_options", "main"]

USER_ERROR = 2
UNEXPECTED_ERROR = 1
INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C

# fieldkit's own commands, one module each under fieldkit/commands/; those that take a graph read it through
# `graph_options`.
BUILTIN_COMMANDS: tuple[click.Command, ...] = (
    distill,
    evaluate,
    export,
    merge,
    plugin,
    plugins,
    report,
    sample,
    schema,
    train,
    validate,
)


class FieldkitGroup(click.Group):
    """The ``fieldkit`` group: fieldkit's commands, then those plugins add, and one-message errors.

    Plugin commands are looked up through the current plugin host each time, so a plugin registered (or a
    host reset) after this group was built is seen. fieldkit's own commands win a name clash.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *get_host().commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self.commands.get(cmd_name) or get_host().commands().get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list with each command's whole first sentence (click cuts it to the terminal width,
        mid-phrase, or at an abbreviation such as "e.g."); long summaries wrap."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.short_help or first_sentence(command.help or "")))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """``--debug`` works anywhere before ``--`` (after the subcommand too): it is fieldkit's option."""
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[:end]:
            args = ["--debug", *(a for i, a in enumerate(args) if i >= end or a != "--debug")]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (
            KeyboardInterrupt
        ) as exc:  # Ctrl-C: say where the run stopped (and how to resume), not "Aborted!"
            click.echo(f"\n{exc}" if str(exc) else "\ninterrupted", err=True)
            ctx.exit(INTERRUPTED)
        except FieldkitError as exc:
            _fail(ctx, exc, USER_ERROR)
        except OSError as exc:  # a path the user gave that cannot be used (space, permissions, a name)
            error = write_error(exc, "cannot read or write a path", "check the path, or choose another one")
            _fail(ctx, exc if error is None else error, UNEXPECTED_ERROR if error is None else USER_ERROR)
        except Exception as exc:
            _fail(ctx, exc, UNEXPECTED_ERROR)


def first_sentence(text: str) -> str:
    """The first sentence of ``text``'s first paragraph: up to the first period that ends a word outside
    parentheses, abbreviations aside (so "(e.g. RUN/student)" stays whole)."""
    words = text.strip().partition("\n\n")[0].split()
    depth = 0
    for i, word in enumerate(words):
        depth += word.count("(") - word.count(")")
        if depth <= 0 and word.endswith(".") and word.lower() not in ("e.g.", "i.e.", "vs.", "etc."):
            return " ".join(words[: i + 1])
    return " ".join(words)


def _plugin_notes() -> str:
    """Notes for a graph error that a broken plugin, a clash (a plugin, command or type ignored) or a
    registration mistake may explain."""
    host = get_host()
    notes = ""
    if host.failures:
        names = ", ".join(sorted({f.name for f in host.failures}))
        notes += f"\n  note: some plugins failed to load ({names}); see `fieldkit plugins`"
    for problem in host.problems():
        notes += f"\n  note: plugin problem: {problem}"
    for warning in host.warnings():
        notes += f"\n  note: plugin {warning}"
    return notes


def _fail(ctx: click.Context, exc: Exception, code: int) -> None:
    """Print ``exc`` as one message on stderr (after the traceback with ``--debug``); exit with ``code``."""
    debug = bool(ctx.params.get("debug"))
    if debug:
        click.echo(traceback.format_exc(), err=True, nl=False)
    if isinstance(exc, FieldkitError):
        message = str(exc)
        if isinstance(exc, GraphError):
            message += _plugin_notes()
    else:
        message = f"unexpected {type(exc).__name__}: {exc}"
        if not debug:
            message += "\n  hint: rerun with `fieldkit --debug ...` to see the traceback"
    click.echo(f"{click.style('Error:', fg='red', bold=True)} {message}", err=True)
    ctx.exit(code)


@click.group(
    cls=FieldkitGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(__version__, "--version", prog_name="fieldkit")
def cli(debug: bool) -> None:
    """fieldkit: on-policy distillation of flow-matching image models from a field graph.

    A field graph (YAML) names velocity fields (teachers, and operators such as guidance over them), binds
    fields to data buckets as routes, and says how the student is trained. Teachers, operators, data and
    commands come from plugins (`pip install fieldkit-plugin-NAME`).

    \b
    Examples:
      fieldkit validate graph.yaml                    check a graph without reading any weights
      fieldkit validate graph.yaml --set run.lr=1e-4  ... with a value overridden
      fieldkit plugins                                list plugins and the types they register
      fieldkit schema --output graph.schema.json      JSON schema of graph files, for editors
    """


for _command in BUILTIN_COMMANDS:
    cli.add_command(_command)
reserve_commands(command.name for command in BUILTIN_COMMANDS if command.name)


def main() -> None:
    """Entry point of the ``fieldkit`` console script."""
    # One progress style, fieldkit's own (rich): the Hub libraries' tqdm bars (transformers and
    # huggingface_hub read this before drawing one; diffusers follows it in fieldkit's loaders) stay off
    # unless the user set the variable.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    drop_unactionable_messages()
    # At exit, before Python tears its modules down: every object into gc's permanent generation, so that
    # the collections of the teardown do not traverse the millions of objects torch, diffusers and
    # transformers made (about 1.1 s of a `fieldkit distill` exit on the project's CPU machine; see
    # benchmarks/exit_cost.py). Objects are still freed by their reference counts; only reference cycles
    # are left to the operating system, whose finalizers Python does not promise to run at exit anyway.
    # fieldkit closes its files and finishes its trackers before then. Registered first, so it runs after
    # every exit handler registered during the command. A process that calls main() and goes on is not
    # affected: the handler runs only when the interpreter exits.
    atexit.register(gc.freeze)
    cli(prog_name="fieldkit")
