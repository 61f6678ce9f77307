"""Options shared by commands: every command that takes a graph reads ``GRAPH`` and ``--set`` the same way,
and every ``--seed`` (plugins' commands too: :func:`seed_option`) takes the same range."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from fieldkit import load_graph

F = TypeVar("F", bound=Callable[..., Any])

SEED_MAX = 2**63 - 1
"""The largest ``--seed``: torch takes seeds below 2**64, and commands seed with small offsets of it (the
noise of ``sample`` and ``eval`` with ``seed + 1``, a tiny pipeline's text encoders with ``seed + 3``)."""


def seed_option(text: str = "Seed of the random weights.") -> Callable[[F], F]:
    """The ``--seed`` option (default 0, from 0 to :data:`SEED_MAX`); ``text`` is its help: what it seeds."""
    return click.option("--seed", default=0, show_default=True, type=click.IntRange(0, SEED_MAX), help=text)


def graph_options(command: F) -> F:
    """Give a click command a ``GRAPH`` argument and repeatable ``--set KEY.PATH=VALUE`` overrides.

    The command receives the validated graph as ``graph`` (a :class:`~fieldkit.graph.loader.Graph`; nothing
    is built and no weight is read). A graph that does not validate raises a GraphError, which the CLI prints
    as one message::

        @click.command()
        @graph_options
        def sample(graph: Graph) -> None: ...
    """

    @click.argument("graph_path", metavar="GRAPH", type=click.Path(path_type=str))
    @click.option(
        "--set",
        "overrides",
        metavar="KEY.PATH=VALUE",
        multiple=True,
        help="Override a value of the graph, e.g. --set run.lr=1e-4 (repeatable; VALUE is read as YAML).",
    )
    @functools.wraps(command)
    def wrapper(*args: Any, graph_path: str, overrides: tuple[str, ...], **kwargs: Any) -> Any:
        return command(*args, graph=load_graph(graph_path, overrides), **kwargs)

    return wrapper  # type: ignore[return-value]


def field_options(command: F) -> F:
    """Give a command repeatable ``--field NAME`` (a field of the graph) and ``--checkpoint DIR`` (a model
    folder) options, passed as ``field_names`` and ``checkpoints``; ``--seed`` comes with them."""
    for option in reversed(
        (
            click.option("--field", "field_names", multiple=True, help="A field of the graph (repeatable)."),
            click.option(
                "--checkpoint",
                "checkpoints",
                multiple=True,
                type=click.Path(path_type=Path, exists=True, file_okay=False),
                help="A model folder, e.g. RUN/student (repeatable).",
            ),
            seed_option("Seed of conditions and noise."),
        )
    ):
        command = option(command)
    return command
