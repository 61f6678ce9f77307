"""``fieldkit export``: a run's student as a diffusers folder or a peft adapter, with a model card."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(short_help="Export a run's student (diffusers or peft) with a model card.")
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["diffusers", "peft"]),
    default="diffusers",
    show_default=True,
    help="diffusers: a pipeline (or model) folder; peft: the LoRA adapter alone.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="A new folder (default: named for what it holds: RUN/fieldkit-model, RUN/diffusers-pipeline, "
    "RUN/diffusers-model or RUN/peft-lora).",
)
@click.option(
    "--checkpoint",
    metavar="latest|DIR",
    help="A training checkpoint of RUN (latest: the newest that loads; or a folder such as "
    "RUN/checkpoints/step-00000100). diffusers: export its student instead of RUN/student, e.g. for a run "
    "that stopped before its end; peft: read the adapter from it (default: latest). Newer checkpoints "
    "that fail to load are skipped with a note, and the model card names the step the weights are from.",
)
@click.option(
    "--license",
    "license_id",
    default="other",
    show_default=True,
    help="The license in the model card's metadata: an SPDX id such as apache-2.0 (letters, digits, "
    "'.', '-' and '+').",
)
@click.option(
    "--base",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="The diffusers pipeline folder to put a diffusers student in (default: the student's init "
    "source's path); refused for fieldkit's own model, which exports as its own folder.",
)
@click.option("--push-to-hub", "repo", metavar="REPO", help="Also upload the folder to this Hub repository.")
@click.option("--private", is_flag=True, help="Create the Hub repository as private.")
def export(
    run: Path,
    fmt: str,
    output: Path | None,
    checkpoint: str | None,
    license_id: str,
    base: Path | None,
    repo: str | None,
    private: bool,
) -> None:
    """Export the student of the run folder RUN with a README.md model card (how to load it and generate an
    image, base model and license, routes, teachers, results, sample grids, the graph) and graph.yaml.

    With --format diffusers, a diffusers student goes back into its pipeline folder, which
    DiffusionPipeline.from_pretrained loads; fieldkit's own MMDiT has no diffusers class and keeps the
    config.json + model.safetensors layout that fieldkit.models.load_pretrained reads. With --format peft,
    a LoRA student's adapter is written for peft.PeftModel.from_pretrained. --push-to-hub uploads the
    folder through huggingface_hub (log in first with `huggingface-cli login` or set HF_TOKEN).

    \b
    Examples:
      fieldkit export runs/digits
      fieldkit export runs/sd35 --base models/sd35 -o sd35-distilled --push-to-hub me/sd35-distilled
      fieldkit export runs/lora --format peft
      fieldkit export runs/stopped --checkpoint latest
    """
    from rich.console import Console
    from rich.markup import escape

    from fieldkit.export import export_run, push_to_hub
    from fieldkit.plugins.manager import get_host

    console = Console(stderr=True, highlight=False)
    registry = get_host().registry
    exported = export_run(
        run, fmt, output, base, checkpoint=checkpoint, license=license_id, registry=registry
    )
    for reason in exported.checkpoint.skipped if exported.checkpoint else ():
        console.print(f"[yellow]skipped a checkpoint that does not load:[/] {escape(reason)}")
    console.print(f"wrote {exported.folder}: {exported.kind}")
    if exported.checkpoint:
        console.print(f"its weights: {exported.checkpoint.path} (step {exported.checkpoint.step})")
    if repo:
        console.print(f"pushed to {push_to_hub(exported.folder, repo, private=private)}")
