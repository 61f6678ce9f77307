"""``fieldkit sample``: a grid of samples of fields and model folders on one route's conditions."""

from __future__ import annotations

from pathlib import Path

import click

from fieldkit.commands.options import field_options, graph_options
from fieldkit.graph.loader import Graph


@click.command(short_help="Sample fields or checkpoints on a route's conditions into a PNG grid.")
@graph_options
@click.option("--route", help="Route whose conditions are sampled (default: the first).")
@click.option(
    "-n",
    "--samples",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Samples per field (the grid's columns), each on its own condition.",
)
@field_options
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("samples.png"),
    show_default=True,
    help="The grid, a PNG (the path must end in .png); its labels (row names, captions) are written beside "
    "it as JSON (for grid.png, grid.json). An existing PNG is replaced only when it is a grid fieldkit "
    "wrote, with its labels beside it; any other file at either path is refused and left as it is.",
)
def sample(
    graph: Graph,
    route: str | None,
    field_names: tuple[str, ...],
    checkpoints: tuple[Path, ...],
    samples: int,
    seed: int,
    output: Path,
) -> None:
    """Sample GRAPH's fields (and model folders) with the same conditions and noise, one row each.

    \b
    Examples:
      fieldkit sample examples/quickstart/graph.yaml --checkpoint runs/quickstart/student
      fieldkit sample graph.yaml --route local --field local_teacher --field guided -n 16 -o local.png
    """
    import torch
    from rich.console import Console

    from fieldkit.commands.sources import collect_fields, default_device, sampling_sigmas
    from fieldkit.data import batch_captions, evaluation_bucket
    from fieldkit.errors import FieldkitError
    from fieldkit.eval.grid import check_grid_path, save_grid
    from fieldkit.flow import generate
    from fieldkit.graph.builder import BuildContext

    check_grid_path(output)  # before any work: only a new path or a grid fieldkit wrote is written
    ctx = BuildContext(graph, device=default_device())
    routes = ctx.routes()
    names = [r.name for r in routes]
    chosen = next((r for r in routes if r.name == (route or names[0])), None)
    if chosen is None:
        raise FieldkitError(f"no route {route!r} in {graph.source.path}", hint=f"routes: {', '.join(names)}")
    spec_field = graph.spec.routes[chosen.name].field
    wanted = list(field_names) or ([] if checkpoints or spec_field is None else [str(spec_field)])
    fields = collect_fields(graph, ctx, wanted, checkpoints)
    if not fields:
        raise FieldkitError("nothing to sample", hint="give --field NAME or --checkpoint DIR")
    bucket = evaluation_bucket(chosen.data)
    batch = bucket.sample(samples, torch.Generator().manual_seed(seed))
    sigmas = sampling_sigmas(graph, fields, tuple(chosen.data.shape), chosen.field)
    rows = [
        generate(
            f,
            batch.cond,
            tuple(chosen.data.shape),
            sigmas,
            torch.Generator().manual_seed(seed + 1),
            ctx.device,
        ).cpu()
        for f in fields.values()
    ]
    labels = list(fields)
    if batch.source is not None:  # an edit route: the images it starts from on top, as the run's grids
        rows, labels = [batch.source, *rows], ["source", *labels]
    save_grid(rows, output, row_labels=labels, captions=batch_captions(bucket, batch))
    Console(stderr=True).print(f"wrote {output}: rows = {', '.join(fields)} on route {chosen.name!r}")
