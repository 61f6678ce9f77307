"""fieldkit-plugin-digits: the embedded default world, where DanceOPD can be seen to work on a CPU.

Real handwritten digits (scikit-learn) on 8 x 16 canvases of two sides, prompts and edit instructions
embedded by MiniLM, and the metrics that score them. Registers:

- datasets ``digits.t2i``, ``digits.local_edit``, ``digits.global_edit`` (see :mod:`fieldkit_digits.buckets`);
- metrics ``digits.t2i`` and ``digits.edit`` (see :mod:`fieldkit_digits.metrics` for the formulas);
- operator ``digits.describe_target`` (see :mod:`fieldkit_digits.ops`);
- commands ``fieldkit digits-judge`` (the judge's held-out accuracy) and ``fieldkit digits-pack`` (store a
  trained model folder in half precision, as the committed teachers are).

Heavy imports (scikit-learn, transformers, scipy) happen in factories, never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fieldkit.plugin_api import hookimpl

if TYPE_CHECKING:
    from fieldkit.plugin_api import BuildContext, RegisterDataset, RegisterMetric, RegisterOperator

__version__ = "0.1.0"


def _bucket(kind: str) -> Any:
    def build(params: Any, ctx: BuildContext) -> Any:
        from fieldkit_digits import buckets

        cls = {"t2i": buckets.T2IBucket, "local": buckets.LocalEditBucket, "global": buckets.GlobalEditBucket}
        return cls[kind](params)

    build.__doc__ = {
        "t2i": "Digits T2I prompts (identity, count, position) with real target canvases.",
        "local": "Digits local edits: replace, remove or add the digit on one side (`ops`, `sides`: some).",
        "global": "Digits global edits: invert, bold, mirror, flip the whole canvas (`ops`: some).",
    }[kind]
    return build


def build_t2i_metric(params: Any, ctx: BuildContext) -> Any:
    """T2I prompt following (accuracy, identity, position, count), Fréchet distance, realism."""
    from fieldkit_digits.metrics import T2IMetric

    return T2IMetric(params)


def build_edit_metric(params: Any, ctx: BuildContext) -> Any:
    """Edit success, preservation (PSNR) and their combined score."""
    from fieldkit_digits.metrics import EditMetric

    return EditMetric(params)


def build_describe_target(params: Any, ctx: BuildContext) -> Any:
    """A field that reads a local edit's Cond as the T2I prompt of the edited canvas."""
    from fieldkit_digits.ops import DescribeTarget

    return DescribeTarget([ctx.field(params.field)])


@hookimpl
def fieldkit_register_datasets(register: RegisterDataset) -> None:
    from fieldkit_digits.params import GlobalEditParams, LocalEditParams, T2IParams

    register("digits.t2i", _bucket("t2i"), T2IParams)
    register("digits.local_edit", _bucket("local"), LocalEditParams)
    register("digits.global_edit", _bucket("global"), GlobalEditParams)


@hookimpl
def fieldkit_register_metrics(register: RegisterMetric) -> None:
    from fieldkit_digits.params import EditMetricParams, T2IMetricParams

    register("digits.t2i", build_t2i_metric, T2IMetricParams)
    register("digits.edit", build_edit_metric, EditMetricParams)


@hookimpl
def fieldkit_register_operators(register: RegisterOperator) -> None:
    from fieldkit_digits.params import DescribeTargetParams

    register("digits.describe_target", build_describe_target, DescribeTargetParams)


@hookimpl
def fieldkit_register_commands(cli: click.Group) -> None:
    @cli.command(name="digits-judge")
    @click.option("--rebuild", is_flag=True, help="Fit the classifier and density again (seeded).")
    def digits_judge(rebuild: bool) -> None:
        """Print the digit classifier's accuracy on held-out real digits."""
        from fieldkit_digits import judge

        if rebuild:
            judge.build()
            judge.judge.cache_clear()
        click.echo(f"digit classifier, held-out accuracy: {judge.judge().heldout_accuracy():.4f}")

    @cli.command(name="digits-pack")
    @click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
    @click.argument("dst", type=click.Path(path_type=Path))
    @click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default="float16")
    def digits_pack(src: Path, dst: Path, dtype: str) -> None:
        """Copy the model folder SRC (e.g. RUN/student) to DST with weights stored as DTYPE."""
        import torch

        from fieldkit.plugin_api import load_pretrained

        model = load_pretrained(src, dtype=getattr(torch, dtype))
        model.save_pretrained(dst)
        size = sum(f.stat().st_size for f in dst.iterdir())
        click.echo(f"wrote {dst} ({size / 1e6:.2f} MB, {dtype})")
