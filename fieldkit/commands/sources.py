"""What ``sample`` and ``eval`` compare: named fields of a graph and model folders, on the graph's routes."""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

import torch

from fieldkit.errors import CheckpointError, FieldkitError
from fieldkit.eval.results import STUDENT
from fieldkit.field import ModuleField, VelocityField
from fieldkit.graph.builder import BuildContext
from fieldkit.graph.loader import Graph


def collect_fields(
    graph: Graph, ctx: BuildContext, names: Sequence[str], checkpoints: Sequence[Path]
) -> dict[str, VelocityField]:
    """``{label: field}`` for graph nodes ``names`` and model folders ``checkpoints`` (loaded, frozen).

    A field is labelled by its name, a model folder by :func:`checkpoint_labels` (never a field's name, so
    that no two columns or rows share a label); a folder given twice is loaded once.

    Model folders are loaded in float32, the dtype fields are sampled in, whatever dtype they were saved in
    (a student saved in float16 or bfloat16 would otherwise meet float32 states): fieldkit's own models with
    :func:`fieldkit.models.load_pretrained`, a diffusers model folder (an sd3 or zimage student) as the
    graph's student would be (:func:`diffusers_student`).
    """
    from fieldkit.models import load_pretrained

    fields: dict[str, VelocityField] = {}
    for name in names:
        if name not in graph.nodes:
            raise FieldkitError(
                f"no field {name!r} in {graph.source.path}", hint=f"known fields: {', '.join(graph.nodes)}"
            )
        fields[name] = ctx.field(name)
    folders = list({folder.resolve(): folder for folder in checkpoints}.values())
    for folder, label in zip(folders, checkpoint_labels(folders, graph.nodes), strict=True):
        if (folder / "graph.json").is_file() and (folder / "student").is_dir():
            raise FieldkitError(
                f"--checkpoint {folder}: a run folder, not a model folder",
                hint=f"give the run's student: --checkpoint {folder / 'student'}",
            )
        if _is_diffusers_folder(folder):
            fields[label] = diffusers_student(graph, ctx, folder)
        else:
            fields[label] = load_pretrained(folder, dtype=torch.float32).to(ctx.device).freeze()
    return fields


def checkpoint_labels(folders: Sequence[Path], fields: Collection[str]) -> list[str]:
    """One label per model folder (the folders are distinct): the shortest ending of its path that no other
    folder's path ends with and that is neither a name in ``fields`` nor ``student`` (the run's own column
    in results): ``model`` alone, ``a/model`` and ``b/model`` together, ``run1/student``, ``ckpt/guided``."""
    paths = [Path(os.path.abspath(folder)).parts for folder in folders]
    labels = []
    for i, parts in enumerate(paths):
        others = paths[:i] + paths[i + 1 :]
        for k in range(1, len(parts) + 1):
            label = str(Path(*parts[-k:]))
            if label not in fields and label != STUDENT and all(o[-k:] != parts[-k:] for o in others):
                break
        labels.append(label)
    return labels


def _is_diffusers_folder(folder: Path) -> bool:
    from fieldkit.models.pretrained import read_config_json

    try:  # bounded, regular files only: a FIFO or a config nested 100,000 deep is load_pretrained's to refuse
        config = read_config_json(folder / "config.json")
    except CheckpointError:
        return False
    return isinstance(config, dict) and "_diffusers_version" in config


def diffusers_student(graph: Graph, ctx: BuildContext, folder: Path) -> VelocityField:
    """The diffusers model ``folder`` (``RUN/student`` of an sd3 or zimage run) as a field of the source type
    that made the graph's student: the first transformer source at or under ``student.init`` (following LoRA
    ``base`` links), built by its own factory from ``folder`` in float32."""
    from fieldkit.backbones.params import AdapterParams, TransformerParams

    if graph.spec.student is None:
        raise FieldkitError(
            f"{folder} is a diffusers model folder, and {graph.source.path} has no student to say which "
            "source type loads it",
            hint="pass the graph the run was trained from",
        )
    typed = graph.nodes[str(graph.spec.student.init)]
    while isinstance(typed.params, AdapterParams):
        typed = graph.nodes[str(typed.params.base)]
    if not isinstance(typed.params, TransformerParams):
        raise FieldkitError(
            f"{folder} is a diffusers model folder, but the student's init in {graph.source.path} is a "
            f"{typed.registration.name!r} node, not a diffusers transformer source"
        )
    update: dict[str, object] = {
        "path": str(folder.resolve()),
        "subfolder": "",
        "variant": None,
        "base_config": None,
        "config": None,
        "dtype": "float32",
    }
    if "base" in type(typed.params).model_fields:  # a source that may share another field's transformer
        update["base"] = None
    built = typed.registration.factory(typed.params.model_copy(update=update), ctx)
    if not isinstance(built, ModuleField):
        raise FieldkitError(f"the {typed.registration.name!r} source built no model field from {folder}")
    return built.to(ctx.device).freeze()


def sampling_sigmas(
    graph: Graph,
    fields: dict[str, VelocityField],
    shape: tuple[int, ...],
    route_field: VelocityField | None = None,
) -> torch.Tensor:
    """The sigmas every compared field samples with: the graph's ``flow.schedule`` (as training rolls out),
    read where the schedule asks for it from the route's own field (an operator's: from the fields it is built
    from), else from the first compared field that has a scheduler (the fields compared share one grid, so
    that they differ only in their velocities)."""
    from fieldkit.flow import own_sigmas, rollout_sigmas

    flow = graph.spec.flow
    candidates = [f for f in (route_field, *fields.values()) if f is not None]
    source = next((f for f in candidates if own_sigmas(f, flow.steps, shape) is not None), candidates[0])
    return rollout_sigmas(flow.schedule, flow.steps, flow.shift, source, shape)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
