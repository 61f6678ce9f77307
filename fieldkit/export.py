"""Export a finished run to the ecosystem: a diffusers folder or a peft LoRA adapter, with a model card, and
optionally pushed to the Hugging Face Hub (``fieldkit export``).

- ``diffusers``: a diffusers student (e.g. the sd3 plugin's transformer) goes back into its pipeline: the base
  pipeline folder (``--base``, or the student's init source when its ``path`` is a pipeline folder) is copied
  with the student in place of the component of the student's class, so ``DiffusionPipeline.from_pretrained``
  loads it. Without a pipeline it is the model folder (``<Class>.from_pretrained``). fieldkit's own MMDiT has
  no diffusers pipeline or model class, so it exports in diffusers' single-model layout (``config.json`` +
  ``model.safetensors``) that ``fieldkit.models.load_pretrained`` reads.
- ``peft``: the LoRA adapter alone (EMA weights when the run kept them) from the newest good checkpoint (or
  the one ``--checkpoint`` names), written by :func:`fieldkit.models.lora.save_lora`:
  ``adapter_config.json`` + ``adapter_model.safetensors`` for ``peft.PeftModel.from_pretrained(base,
  folder)`` and, for a diffusers student, ``pytorch_lora_weights.safetensors`` for a pipeline's
  ``load_lora_weights(folder)``; the rank is read from the tensors and the student's init source is named as
  the base model.

Every export gets a ``README.md`` model card: how to load it, which weights these are (RUN/student, or a
checkpoint's step), the routes and teachers, the results table (only when it was measured on these weights),
the newest sample grid of each route, and the graph. Everything is checked before anything is written: the
license, the checkpoint (a newer one that fails to load is skipped, and the export says so), and the student
folder (its config and its safetensors headers).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fieldkit.atomic import atomic_path
from fieldkit.errors import CheckpointError, FieldkitError
from fieldkit.eval.results import markdown
from fieldkit.eval.run_report import RunFolder, read_run
from fieldkit.files import check_regular
from fieldkit.models.lora import DIFFUSERS_WEIGHTS, WRAPPER, lora_tensors, save_lora

if TYPE_CHECKING:
    from fieldkit.distill.checkpoint import TrainState
    from fieldkit.plugins.registry import Registry

FORMATS = ("diffusers", "peft")
#: A license id as the Hub's model cards take it: SPDX-like (apache-2.0, cc-by-nc-4.0, gpl-3.0+, other).
LICENSE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]*")


@dataclass(frozen=True)
class Checkpoint:
    """The training checkpoint an export's weights come from."""

    path: Path
    step: int
    ema: bool  # the weights are the checkpoint's EMA of the student
    skipped: tuple[str, ...] = ()  # why newer checkpoints were passed over (``latest``), newest first


@dataclass(frozen=True)
class Exported:
    """What an export wrote: the folder, what it holds, the Python that loads it, and where its weights
    come from (a checkpoint, or RUN/student when ``checkpoint`` is None)."""

    folder: Path
    kind: str
    load: str
    library: str
    pipeline: str = ""  # the diffusers pipeline class of a pipeline folder
    model_class: str = ""  # the diffusers model class of a model folder
    checkpoint: Checkpoint | None = None


def check_license(license: str) -> str:
    """``license`` when it is an SPDX-like id (letters, digits, ``.``, ``-``, ``+``), else a FieldkitError."""
    if LICENSE.fullmatch(license) is None:
        raise FieldkitError(
            f"--license {license!r} is not a license id (letters, digits, '.', '-' and '+', no spaces)",
            hint="give an SPDX id such as apache-2.0, mit or cc-by-nc-4.0, or leave it out for `other`",
        )
    return license


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a folder, file by file: never hard-linked, so writing into an export cannot change the run's
    student or the base pipeline. Links inside ``src`` are copied as what they point to (a pipeline from a
    Hub cache is links to blobs); anything not a regular file (a FIFO, a device) is refused, not read."""

    def copy_regular(a: str, b: str) -> None:
        check_regular(a, "file to export")
        shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=copy_regular)


def _graph_root(run: RunFolder) -> Path:
    """The folder the run's graph file was in (relative paths in the graph are relative to it): from the
    run's newest ``sessions.jsonl`` line, else the working folder."""
    sessions = run.folder / "sessions.jsonl"
    lines = sessions.read_text().splitlines() if sessions.is_file() else []
    try:
        graph = json.loads(lines[-1]).get("graph") if lines else None
    except ValueError:
        graph = None
    return Path(graph).parent if isinstance(graph, str) else Path.cwd()


def _init_path(run: RunFolder) -> Path | None:
    """The ``path`` of the student's init source (resolved against the graph's folder), when it exists."""
    init = (run.graph.get("student") or {}).get("init")
    path = (run.graph.get("fields", {}).get(init) or {}).get("path")
    if not isinstance(path, str):
        return None
    resolved = _graph_root(run) / Path(path).expanduser()
    return resolved if resolved.is_dir() else None


def _component_of(pipeline: Path, class_name: str) -> str | None:
    """The pipeline component (subfolder) whose model class is ``class_name``."""
    index = json.loads((pipeline / "model_index.json").read_text())
    return next(
        (name for name, value in index.items() if isinstance(value, list) and value[-1] == class_name), None
    )


def _checkpoint_hint(run: RunFolder) -> str:
    """How to name a checkpoint of ``run`` to export."""
    from fieldkit.distill.checkpoint import list_checkpoints

    root = run.folder / "checkpoints"
    names = ", ".join(p.name for p in list_checkpoints(root)[-3:]) or "none"
    return (
        "give --checkpoint latest (the newest checkpoint that loads) or a checkpoint folder in "
        f"{root} (the newest: {names})"
    )


def _check_checkpoint_folder(run: RunFolder, path: Path) -> None:
    """Refuse a ``--checkpoint`` that is no training checkpoint, saying what it is: no folder (a bare name
    of one of the run's checkpoints gets its path), a model folder or a diffusers pipeline folder."""
    from fieldkit.distill.checkpoint import MANIFEST

    if not path.is_dir():
        near = run.folder / "checkpoints" / path.name
        raise CheckpointError(
            f"{path}: no such checkpoint folder",
            hint=f"give its path: --checkpoint {near}" if near.is_dir() else _checkpoint_hint(run),
        )
    if (path / MANIFEST).is_file():
        return
    if (path / "model_index.json").is_file():
        what = "a diffusers pipeline folder"
    elif (path / "config.json").is_file():
        what = "a model folder"
    else:
        return  # verify_checkpoint says what is missing
    raise CheckpointError(
        f"{path}: {what}, not a training checkpoint (RUN/checkpoints/step-N)",
        hint=f"{_checkpoint_hint(run)}; without --checkpoint, export takes {run.folder / 'student'}",
    )


def _no_checkpoint(run: RunFolder, fmt: str, skipped: list[CheckpointError]) -> CheckpointError:
    """The error for a run with no checkpoint that loads, with what to export instead."""
    root, student = run.folder / "checkpoints", run.folder / "student"
    message = (
        f"{root}: no checkpoint that loads (the newest: {skipped[0].message})"
        if skipped
        else f"{run.folder}: the run has no checkpoints ({root} is empty or missing)"
    )
    if fmt == "peft":
        hint = "a LoRA adapter is read from a checkpoint; " + (
            f"export the merged student {student} with --format diffusers"
            if student.is_dir()
            else "run the graph again so that it writes checkpoints (run.checkpoint_every)"
        )
    else:
        hint = f"leave out --checkpoint to export {student}" if student.is_dir() else "run the graph again"
    return CheckpointError(message, hint=hint)


def _read_checkpoint(run: RunFolder, which: str, fmt: str) -> tuple[Checkpoint, TrainState]:
    """The checkpoint ``which`` of ``run`` (``latest``: the newest that loads, newer ones that fail skipped
    with their reasons; or a checkpoint folder, which must load) and its state, its weights whole."""
    from fieldkit.distill.checkpoint import load_resumable, load_weights

    if which != "latest":
        _check_checkpoint_folder(run, Path(which))
    try:
        path, state, skipped = load_resumable(run.folder / "checkpoints", which, lambda _path, _state: None)
    except CheckpointError as err:  # the folder given fails to load
        raise CheckpointError(err.message, hint=_checkpoint_hint(run)) from None
    if path is None or state is None:
        raise _no_checkpoint(run, fmt, skipped)
    if state.sharded:  # FSDP: the weights are in its shards
        state = load_weights(path)
    reasons = tuple(err.message for err in skipped)
    return Checkpoint(path, state.step, state.ema is not None, reasons), state


def student_from_checkpoint(
    run: RunFolder, checkpoint: Checkpoint, state: TrainState, into: Path, registry: Registry
) -> Path:
    """Write the student of ``checkpoint`` (read as ``state``) as a model folder under ``into``, as the run's
    end writes RUN/student: the student built from the graph (its types looked up in ``registry``), the
    checkpoint's EMA weights when it kept them (else its weights), LoRA merged."""
    from fieldkit.distill.student import make_student
    from fieldkit.graph.builder import BuildContext
    from fieldkit.graph.loader import validate_parsed
    from fieldkit.graph.yaml_source import YamlSource
    from fieldkit.models.lora import merge_and_strip
    from fieldkit.models.pretrained import save_model_folder

    graph = validate_parsed(YamlSource(run.graph, str(_graph_root(run) / "graph.json")), (), registry)
    spec = graph.spec.student
    if spec is None:
        raise FieldkitError(f"{run.folder}: its graph has no student")
    model = make_student(BuildContext(graph).field(str(spec.init)), spec)
    try:
        unexpected = model.load_state_dict(state.student, strict=False).unexpected_keys
    except RuntimeError:  # shape mismatches raise even when not strict
        unexpected = ["(a tensor of another shape)"]
    if unexpected:
        raise FieldkitError(
            f"{checkpoint.path}: its weights do not fit the run's student",
            hint="is it this run's checkpoint?",
        )
    if state.ema is not None:
        model.load_state_dict(state.ema, strict=False)
    model = merge_and_strip(model).eval()
    folder = into / "student"
    folder.mkdir(parents=True)
    save_model_folder(model, folder)
    return folder


#: What to export when RUN/student is damaged.
DAMAGED_STUDENT = "export a checkpoint of the run instead: --checkpoint latest"


def _check_header(file: Path) -> None:
    """Refuse a weights file that is not a regular file with a readable safetensors header."""
    from safetensors import SafetensorError, safe_open

    try:
        check_regular(file, "weights file", CheckpointError)
        with safe_open(str(file), framework="pt") as fh:
            fh.keys()
    except CheckpointError as err:
        raise CheckpointError(err.message, hint=DAMAGED_STUDENT) from None
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{file}: not a readable safetensors file (truncated or corrupted?): {err}", hint=DAMAGED_STUDENT
        ) from None


def _student_config(run: RunFolder, student: Path) -> dict[str, Any]:
    """The config of the model folder ``student``, checked before anything is copied: its config.json is a
    JSON object and its weights' safetensors headers read (weights are not loaded)."""
    from fieldkit.models.pretrained import CONFIG_NAME, WEIGHTS_NAME, read_config_json

    if not (student / CONFIG_NAME).exists():
        checkpoints = run.folder / "checkpoints"
        stopped = checkpoints.is_dir() and any(checkpoints.iterdir())
        raise FieldkitError(
            f"{student}: no exported student"
            + (" (the run stopped before its end; it has checkpoints)" if stopped else ""),
            hint="export a checkpoint with --checkpoint latest (or a checkpoint folder)"
            if stopped
            else "export a run that finished",
        )
    try:
        config = read_config_json(student / CONFIG_NAME)
    except CheckpointError as err:
        raise CheckpointError(err.message, hint=DAMAGED_STUDENT) from None
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{student / CONFIG_NAME}: not a model config (a JSON {type(config).__name__}, not an object)",
            hint=DAMAGED_STUDENT,
        )
    diffusers = "_diffusers_version" in config
    weights = sorted(student.glob("*.safetensors")) if diffusers else [student / WEIGHTS_NAME]
    if not weights:
        raise CheckpointError(
            f"{student}: no weights (*.safetensors) beside its config",
            hint=DAMAGED_STUDENT,
        )
    for file in weights:
        _check_header(file)
    return config


def _check_base(base: Path | None, config: dict[str, Any]) -> None:
    """Refuse ``--base`` for a student that goes into no diffusers pipeline (fieldkit's own model)."""
    if base is not None and "_diffusers_version" not in config:
        raise FieldkitError(
            f"--base {base}: the student is fieldkit's own {config.get('_class_name')}, which goes into no "
            "diffusers pipeline (it exports as its own model folder)",
            hint="leave out --base",
        )


def _diffusers(
    run: RunFolder, out: Path, base: Path | None, student: Path, config: dict[str, Any]
) -> Exported:
    class_name = str(config.get("_class_name"))
    if "_diffusers_version" not in config:
        _copy_tree(student, out)
        return Exported(
            out,
            f"fieldkit {class_name} folder: fieldkit's own model has no diffusers pipeline or model class, "
            "so it keeps diffusers' single-model layout (config.json + model.safetensors)",
            f'from fieldkit.models import load_pretrained\nmodel = load_pretrained("{out.name}")',
            "fieldkit",
        )
    pipeline = base or _init_path(run)
    if pipeline is not None and not (pipeline / "model_index.json").is_file():
        if base is not None:
            raise FieldkitError(f"{base}: not a diffusers pipeline folder (no model_index.json)")
        pipeline = None
    if pipeline is None:
        _copy_tree(student, out)
        return Exported(
            out,
            f"diffusers {class_name} folder (for a whole pipeline, pass --base PIPELINE)",
            f'from diffusers import {class_name}\nmodel = {class_name}.from_pretrained("{out.name}")',
            "diffusers",
            model_class=class_name,
        )
    component = _component_of(pipeline, class_name)
    if component is None:
        raise FieldkitError(f"{pipeline}: the pipeline has no {class_name} component to replace")
    _copy_tree(pipeline, out)
    shutil.rmtree(out / component)
    _copy_tree(student, out / component)
    pipeline_class = str(json.loads((pipeline / "model_index.json").read_text()).get("_class_name"))
    return Exported(
        out,
        f"diffusers {pipeline_class} folder, the distilled student as its {component}",
        _pipeline_snippet(out.name, str(pipeline_class)),
        "diffusers",
        pipeline_class,
    )


#: Pipelines whose snippet needs more than ``from_pretrained``: why, and the lines that load it.
_BF16_VAE = (
    "# {cls} encodes edit images with vae.encode(image.bfloat16()): an fp32 VAE fails on edits, so\n"
    "# the VAE is loaded in bfloat16 (diffusers casts the latents back)\n"
    "import torch\n"
    "from diffusers import AutoencoderKL, DiffusionPipeline\n"
    'vae = AutoencoderKL.from_pretrained("{out}", subfolder="vae", torch_dtype=torch.bfloat16)\n'
    'pipe = DiffusionPipeline.from_pretrained("{out}", vae=vae)'
)


def _pipeline_snippet(out: str, pipeline_class: str) -> str:
    """The Python that loads an exported pipeline folder ``out``."""
    if pipeline_class == "ZImageOmniPipeline":
        return _BF16_VAE.format(cls=pipeline_class, out=out)
    return f'from diffusers import DiffusionPipeline\npipe = DiffusionPipeline.from_pretrained("{out}")'


def _check_lora(run: RunFolder) -> None:
    """Refuse a peft export of a run whose student was not trained as a LoRA."""
    if (run.graph.get("student") or {}).get("train") != "lora":
        raise FieldkitError(
            f"{run.folder}: the student was trained in full, so there is no LoRA adapter to export",
            hint="use --format diffusers",
        )


def _peft(run: RunFolder, out: Path, checkpoint: Checkpoint, state: TrainState) -> Exported:
    weights = state.ema if state.ema is not None else state.student
    lora = (run.graph.get("student") or {}).get("lora") or {}
    base = _init_path(run)
    config = save_lora(
        out,
        lora_tensors(weights),
        alpha=lora.get("alpha"),
        dropout=float(lora.get("dropout") or 0.0),
        base_model=None if base is None else str(base),
        diffusers=any(k.startswith(WRAPPER) for k in weights),
    )
    loads = "PeftModel.from_pretrained(base_model, folder)"
    if (out / DIFFUSERS_WEIGHTS).is_file():
        loads += "; a diffusers pipeline's load_lora_weights(folder)"
    return Exported(
        out,
        f"peft LoRA adapter (rank {config['r']}, {len(config['target_modules'])} modules, "
        f"from {checkpoint.path.name}; "
        f"loads with {loads})",
        f'from peft import PeftModel\n\nmodel = PeftModel.from_pretrained(base_model, "{out.name}")',
        "peft",
    )


#: The guidance scale at which each pipeline runs no classifier-free guidance (a student distilled from a
#: guided field carries the guidance in its weights).
NO_GUIDANCE = {"StableDiffusion3Pipeline": 1.0, "ZImagePipeline": 0.0, "ZImageOmniPipeline": 0.0}


def _guided(graph: dict[str, Any]) -> bool:
    """Whether some field of the graph is a guidance operator (``guidance`` or a plugin's ``*.guidance``)."""
    return any(
        str((spec or {}).get("type", "")).split(".")[-1] == "guidance"
        for spec in graph.get("fields", {}).values()
    )


FIELDKIT_USAGE = """\
import torch
from fieldkit import load_graph
from fieldkit.flow import generate, rollout_sigmas
from fieldkit.graph import BuildContext
from fieldkit.models import load_pretrained

student = load_pretrained("{folder}")
# Conditions: 8 draws from route {route}'s data ({data}, as in training; its plugin must be installed).
data = BuildContext(load_graph("{folder}/graph.yaml")).data("{route}")
cond = data.sample(8, torch.Generator().manual_seed(0)).cond
shape = tuple(data.shape)
# Sampler: {steps} Euler steps from noise (sigma 1) to an image (sigma 0), schedule {schedule}, shift {shift}.
sigmas = rollout_sigmas("{schedule}", {steps}, {shift}, student, shape)
images = generate(student, cond, shape, sigmas, torch.Generator().manual_seed(1))  # [8, *shape] in [-1, 1]"""


def usage(run: RunFolder, exported: Exported) -> str:
    """Python that generates images from the exported folder, with the run's conditions, sampler, steps
    and shift."""
    flow = run.graph.get("flow") or {}
    steps, shift, schedule = flow.get("steps", 16), flow.get("shift", 3.0), flow.get("schedule", "auto")
    folder = exported.folder.name
    if exported.library == "fieldkit":
        routes = run.graph.get("routes") or {}
        route = next((name for name, r in routes.items() if (r or {}).get("metrics")), next(iter(routes), ""))
        data = ((routes.get(route) or {}).get("data") or {}).get("type", "")
        return FIELDKIT_USAGE.format(
            folder=folder, route=route, data=data, steps=steps, shift=shift, schedule=schedule
        )
    lines = ["from diffusers import DiffusionPipeline", ""]
    if exported.pipeline:
        lines.append(f'pipe = DiffusionPipeline.from_pretrained("{folder}")')
    elif exported.library == "peft":
        lines += [
            "# BASE: the pipeline folder (or Hub id) the student started from",
            'pipe = DiffusionPipeline.from_pretrained("BASE")',
            f'pipe.load_lora_weights("{folder}")',
        ]
    else:
        lines = [
            f"from diffusers import DiffusionPipeline, {exported.model_class}",
            "",
            "# BASE: the pipeline folder (or Hub id) the student started from",
            f'student = {exported.model_class}.from_pretrained("{folder}")',
            'pipe = DiffusionPipeline.from_pretrained("BASE", transformer=student)',
        ]
    guidance = NO_GUIDANCE.get(exported.pipeline) if _guided(run.graph) else None
    extra = f", guidance_scale={guidance}" if guidance is not None else ""
    trained_on = "its own sigmas" if schedule != "shift" else f"the shift-{shift} schedule"
    lines += [
        f"# Sampler: the pipeline's Euler scheduler, {steps} steps (the run trained on {trained_on}).",
        *(
            ["# No classifier-free guidance: the student carries the guidance it was distilled from."]
            if extra
            else []
        ),
        f'image = pipe("a photo of a cat", num_inference_steps={steps}{extra}).images[0]',
        'image.save("sample.png")',
    ]
    return "\n".join(lines)


def base_model(run: RunFolder, base: Path | None) -> str | None:
    """The model the student started from: ``--base``, else the ``path`` of the student's init source."""
    if base is not None:
        return base.name
    init = (run.graph.get("student") or {}).get("init")
    path = (run.graph.get("fields", {}).get(init) or {}).get("path")
    return str(path) if isinstance(path, str) else None


def _weights(run: RunFolder, checkpoint: Checkpoint | None) -> str:
    """Which weights an export holds, in words: RUN/student's, or a checkpoint's (its step)."""
    if checkpoint is None:
        return run.evaluated_weights
    steps = (run.graph.get("run") or {}).get("steps")
    of = f" of the run's {steps}" if isinstance(steps, int) else ""
    what = (
        "an EMA of the student's weights at that step"
        if checkpoint.ema
        else "the student's weights after that step's update (no EMA)"
    )
    return f"from the training checkpoint {checkpoint.path.name} (step {checkpoint.step}{of}): {what}"


def _results(run: RunFolder, checkpoint: Checkpoint | None) -> str:
    """The card's results: the run's table when it was measured on these weights (RUN/student's, which a
    checkpoint of the run's last step holds too), else why it is not shown."""
    if not run.results.scores:
        return "No route had metrics in this run, so there are no results."
    steps = (run.graph.get("run") or {}).get("steps")
    if checkpoint is None or checkpoint.step == steps:
        return markdown([("", run.results)])
    return (
        f"The run's results were measured on its student at the end of the run (step {steps}), not on these "
        f"weights from step {checkpoint.step}, so they are not shown here."
    )


def model_card(
    run: RunFolder,
    exported: Exported,
    samples: dict[str, str],
    license: str = "other",
    base: str | None = None,
) -> str:
    """The README.md of an export: front matter (library, license, base model, tags), how to load it and
    generate an image, which weights these are, routes and teachers, results, samples, the graph."""
    graph = run.graph
    method = (graph.get("method") or {}).get("type", "danceopd")
    front: dict[str, Any] = {"library_name": exported.library, "license": license}
    if base:
        front["base_model"] = base
    front["tags"] = ["fieldkit", "flow-matching", "distillation", method]
    routes = graph.get("routes", {})
    route_rows = [
        f"| {name} | {r.get('field') or '-'} | {(r.get('data') or {}).get('type', '-')} | {r.get('weight')} |"
        for name, r in routes.items()
    ]
    field_rows = [
        f"| {name} | {spec.get('type')} | "
        + ", ".join(f"{k}={v}" for k, v in spec.items() if k != "type" and not isinstance(v, dict | list))
        + " |"
        for name, spec in graph.get("fields", {}).items()
    ]
    run_spec = graph.get("run", {})
    training = (
        f"{run_spec.get('steps')} steps, batch {run_spec.get('batch_size')} "
        f"x {run_spec.get('grad_accum', 1)}, "
        f"lr {run_spec.get('lr')} ({run_spec.get('lr_schedule', 'constant')}, "
        f"{run_spec.get('warmup_steps', 0)} warmup), optimizer "
        f"{(run_spec.get('optimizer') or {}).get('type', 'adamw')}"
    )
    parts = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {run.name}",
        "",
        f"A student distilled with fieldkit (method `{method}`): "
        f"{training}. This folder is a {exported.kind}. Its weights are "
        f"{_weights(run, exported.checkpoint)}.",
        "",
        f"License: `{license}`"
        + (" (set it with `fieldkit export --license`)." if license == "other" else ".")
        + " A distilled model also falls under the licenses of its teachers and of the model it started from"
        + (f" (`{base}`)." if base else "."),
        "",
        "## Load it",
        "",
        "```python",
        exported.load,
        "```",
        "",
        "## Generate an image",
        "",
        "```python",
        usage(run, exported),
        "```",
        "",
        "## Routes and teachers",
        "",
        "| route | field (teacher) | data | weight |",
        "| --- | --- | --- | ---: |",
        *route_rows,
        "",
        "| field | type | parameters |",
        "| --- | --- | --- |",
        *field_rows,
        "",
        "## Results",
        "",
        _results(run, exported.checkpoint),
        "",
        "## Samples",
        "",
    ]
    if not samples:
        parts.append("The run wrote no sample grids.")
    for grid in run.grids:
        if grid.route in samples:
            rows = f"Rows: {' / '.join(grid.rows)}." if grid.rows else ""
            captions = " ".join(f"{i}: {c}." for i, c in enumerate(grid.captions, 1))
            parts += [
                f"![samples of route {grid.route}]({samples[grid.route]})",
                "",
                f"Sampled during the run at step {grid.step}. {rows} {captions}",
                "",
            ]
    parts += [
        "## Graph",
        "",
        "```yaml",
        yaml.safe_dump(graph, sort_keys=False, default_flow_style=None).strip(),
    ]
    parts += ["```", ""]
    return "\n".join(parts)


def default_folder(run_folder: Path, fmt: str, base: Path | None = None, student: Path | None = None) -> Path:
    """Where ``fieldkit export`` writes when no -o is given, named for what it will hold:
    RUN/peft-lora, RUN/fieldkit-model, RUN/diffusers-pipeline or RUN/diffusers-model (``student``: the model
    folder exported, RUN/student by default)."""
    if fmt == "peft":
        return run_folder / "peft-lora"
    config_file = (student or run_folder / "student") / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if config and "_diffusers_version" not in config:
        return run_folder / "fieldkit-model"
    pipeline = base or _init_path(read_run(run_folder))
    whole = pipeline is not None and (pipeline / "model_index.json").is_file()
    return run_folder / ("diffusers-pipeline" if whole else "diffusers-model")


def export_run(
    run_folder: Path,
    fmt: str,
    out: Path | None = None,
    base: Path | None = None,
    *,
    checkpoint: str | None = None,
    license: str = "other",
    registry: Registry | None = None,
) -> Exported:
    """Export the run in ``run_folder`` as ``fmt`` (diffusers or peft) to the new folder ``out`` (default:
    :func:`default_folder`), with its model card and the graph it ran (``graph.yaml``). ``checkpoint``
    (``latest`` or a checkpoint folder) exports that checkpoint's student instead of RUN/student, rebuilt
    from the run's graph with the types of ``registry`` (the command passes the plugin host's); a peft
    adapter is read from it (default: ``latest``). The exported's ``checkpoint`` says which one, and which
    newer ones were skipped. Everything is checked first; nothing is left at ``out`` if the export fails."""
    if fmt not in FORMATS:
        raise FieldkitError(f"unknown export format {fmt!r}", hint=f"choose one of: {', '.join(FORMATS)}")
    check_license(license)
    run = read_run(run_folder)
    if fmt == "peft":
        _check_lora(run)
    with tempfile.TemporaryDirectory() as scratch:
        source: Checkpoint | None = None
        student = run.folder / "student"
        if fmt == "peft":
            source, state = _read_checkpoint(run, checkpoint or "latest", fmt)
            write = functools.partial(_peft, run, checkpoint=source, state=state)
        else:
            if checkpoint is not None:
                if registry is None:
                    raise ValueError("export_run(checkpoint=...) needs the registry of the run's types")
                source, state = _read_checkpoint(run, checkpoint, fmt)
                student = student_from_checkpoint(run, source, state, Path(scratch), registry)
            config = _student_config(run, student)
            _check_base(base, config)
            write = functools.partial(_diffusers, run, base=base, student=student, config=config)
        out = out or default_folder(run_folder, fmt, base, student)
        if out.exists():
            raise FieldkitError(f"{out} already exists", hint="choose a new folder with -o, or remove it")
        with atomic_path(out) as tmp:  # the exporters create the folder
            exported = replace(write(out=tmp), checkpoint=source)
            _finish(run, exported, tmp, out, license, base_model(run, base))
    return replace(exported, folder=out, load=exported.load.replace(tmp.name, out.name))


def _finish(run: RunFolder, exported: Exported, tmp: Path, out: Path, license: str, base: str | None) -> None:
    """Beside the model: the newest sample grid of each route, graph.yaml and the model card."""
    samples = {}
    for grid in run.grids:
        (tmp / "samples").mkdir(exist_ok=True)
        check_regular(grid.png, "sample grid")
        shutil.copy2(grid.png, tmp / "samples" / f"{grid.route}.png")
        samples[grid.route] = f"samples/{grid.route}.png"
    final = replace(exported, folder=out, load=exported.load.replace(tmp.name, out.name))
    (tmp / "graph.yaml").write_text(yaml.safe_dump(run.graph, sort_keys=False, default_flow_style=None))
    (tmp / "README.md").write_text(model_card(run, final, samples, license, base))


def push_to_hub(folder: Path, repo: str, api: Any = None, private: bool = False) -> str:
    """Upload an exported folder to the Hub repository ``repo`` (created if missing); returns its URL.

    ``api`` is a ``huggingface_hub.HfApi`` (a new one, which reads the token from the environment or
    ``huggingface-cli login``, by default). A failed upload (offline, no network, no token, a refused repo)
    is a FieldkitError that says the folder is kept and how to upload it later.
    """
    import httpx
    from huggingface_hub import HfApi

    api = api or HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message="Upload a fieldkit export")
    except (OSError, ValueError, httpx.HTTPError) as err:  # the hub's errors are OSErrors or ValueErrors
        raise FieldkitError(
            f"{folder} is written, but uploading it to the Hub repository {repo!r} failed: "
            f"{type(err).__name__}: {err}",
            hint=f"upload it later with `hf upload {repo} {folder} .` (log in first: `hf auth login`)",
        ) from None
    return str(url)
