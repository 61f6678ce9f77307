"""``fieldkit report``: one self-contained HTML page for a run, or a comparison of runs."""

from __future__ import annotations

from pathlib import Path

import click

MARKER = b"<title>fieldkit report: "
"""What the head of every page ``fieldkit report`` and ``fieldkit distill`` write holds: a file without it is
not one that ``report`` may replace."""
HEAD_BYTES = 1024


@click.command(short_help="Write an HTML report of one run, or a comparison of runs.")
@click.argument("runs", metavar="RUN [RUN ...]", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The HTML file to write (default: RUN/report.html for one run, report.html for several).",
)
def report(runs: tuple[Path, ...], output: Path | None) -> None:
    """Write one self-contained HTML page for the run folder RUN, or a comparison of several: whether the
    student passed (the results table) and which weights were scored, a picture of the field graph, every
    route's loss on one axis, the training metrics that change, each route's sample grids over the steps,
    and the graph; a comparison adds the settings that differ and puts the runs' grids side by side. The
    page embeds its plots and images and loads nothing from the network. `fieldkit distill` writes
    RUN/report.html at the end of every run.

    \b
    Examples:
      fieldkit report runs/digits
      fieldkit report runs/danceopd runs/soft -o compare.html
    """
    from rich.console import Console

    from fieldkit.eval.run_report import write_report
    from fieldkit.files import check_replaceable

    target = output or (runs[0] / "report.html" if len(runs) == 1 else Path("report.html"))
    check_replaceable(target, "report", is_report)
    write_report(list(runs), target)
    Console(stderr=True, highlight=False).print(f"wrote {target}")


def is_report(path: Path) -> bool:
    """Whether the file ``path`` is a report page fieldkit wrote (:data:`MARKER` in its head)."""
    from fieldkit.files import read_head

    return MARKER in read_head(path, HEAD_BYTES, "report")
