"""``fieldkit merge``: average the weights of model folders of one architecture (weight merging)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(short_help="Merge model folders in parameter space: theta = sum_i w_i theta_i.")
@click.argument(
    "models", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, file_okay=False)
)
@click.option(
    "-w",
    "--weight",
    "weights",
    multiple=True,
    type=float,
    help="One per model, divided by their sum; default equal. Negative: task arithmetic.",
)
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path), help="The merged model folder."
)
def merge(models: tuple[Path, ...], weights: tuple[float, ...], output: Path) -> None:
    """Merge the weights of MODELS (fieldkit model folders of one architecture) into OUTPUT.

    OUTPUT = sum_i w_i MODEL_i with the weights divided by their sum: an average, or with negative weights
    task arithmetic (a + b - base).

    \b
    Example:
      fieldkit merge teachers/local teachers/global -w 0.5 -w 0.5 -o teachers/merged
      fieldkit merge teachers/local teachers/global teachers/t2i -w 1 -w 1 -w -1 -o teachers/arith
    """
    from rich.console import Console

    from fieldkit.files import check_new_folder
    from fieldkit.merge import merge_models, merge_weights
    from fieldkit.models import load_pretrained

    check_new_folder(output, "merged model folder", models)
    normalised = merge_weights(weights or None, len(models))  # checked before any model is read; shown below
    merged = merge_models([load_pretrained(m) for m in models], weights or None)  # divides them by their sum
    merged.save_pretrained(output)
    parts = ", ".join(f"{w:.3g} x {m}" for w, m in zip(normalised, models, strict=True))
    Console(stderr=True).print(f"wrote {output} = {parts}")
