"""Export a finished run to the ecosystem: a diffusers folder or a peft LoRA adapter, with a model card, and
optionally pushed to the Hugging Face Hub (``fieldkit export``).

- ``diffusers``: a diffusers student (e.g. the sd3 plugin's transformer) goes back into its pipeline: the base
  pipeline folder (``--base``, or the student's init source when its ``path`` is a pipeline folder) is copied
  with the student in place of the component of the student's class, so ``DiffusionPipeline.from_pretrained``
  loads it. Without a pipeline it is the model folder (``<Class>.from_pretrained``). fieldkit's own MMDiT has
  no diffusers pipeline or model class, so it exports in diffusers' single-model layout (``config.json`` +
  ``model.safetensors``) that ``fieldkit.models.load_pretrained`` reads.
- ``peft``: the LoRA adapter alone (EMA weights when the run kept them) from the newest good checkpoint,
  written by :func:`fieldkit.models.lora.save_lora`: ``adapter_config.json`` +
  ``adapter_model.safetensors`` for ``peft.PeftModel.from_pretrained(base, folder)`` and, for a diffusers
  student, ``pytorch_lora_weights.safetensors`` for a pipeline's ``load_lora_weights(folder)``; the rank is
  read from the tensors and the student's init source is named as the base model.

Every export gets a ``README.md`` model card: how to load it, the routes and teachers, the results table, the
newest sample grid of each route, and the graph.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fieldkit.atomic import atomic_path
from fieldkit.errors import FieldkitError
from fieldkit.eval.results import markdown
from fieldkit.eval.run_report import RunFolder, read_run
from fieldkit.files import check_regular
from fieldkit.models.lora import DIFFUSERS_WEIGHTS, WRAPPER, lora_tensors, save_lora

FORMATS = ("diffusers", "peft")


@dataclass(frozen=True)
class Exported:
    """What an export wrote: the folder, what it holds, and the Python that loads it."""

    folder: Path
    kind: str
    load: str
    library: str


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


def _diffusers(run: RunFolder, out: Path, base: Path | None) -> Exported:
    student = run.folder / "student"
    config_file = student / "config.json"
    if not config_file.is_file():
        raise FieldkitError(f"{student}: no exported student", hint="export a run that finished")
    config = json.loads(config_file.read_text())
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
        )
    component = _component_of(pipeline, class_name)
    if component is None:
        raise FieldkitError(f"{pipeline}: the pipeline has no {class_name} component to replace")
    _copy_tree(pipeline, out)
    shutil.rmtree(out / component)
    _copy_tree(student, out / component)
    pipeline_class = json.loads((pipeline / "model_index.json").read_text()).get("_class_name")
    return Exported(
        out,
        f"diffusers {pipeline_class} folder, the distilled student as its {component}",
        _pipeline_snippet(out.name, str(pipeline_class)),
        "diffusers",
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


def _peft(run: RunFolder, out: Path) -> Exported:
    from fieldkit.distill.checkpoint import load_weights, resolve_resume

    student = run.graph.get("student") or {}
    if student.get("train") != "lora":
        raise FieldkitError(
            f"{run.folder}: the student was trained in full, so there is no LoRA adapter to export",
            hint="use --format diffusers",
        )
    path, _ = resolve_resume(run.folder / "checkpoints", "latest")
    if path is None:
        raise FieldkitError(f"{run.folder}: no good checkpoint to take the adapter from")
    state = load_weights(path)
    weights = state.ema if state.ema is not None else state.student
    lora = student.get("lora") or {}
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
        f"peft LoRA adapter (rank {config['r']}, {len(config['target_modules'])} modules, from {path.name}; "
        f"loads with {loads})",
        f'from peft import PeftModel\nmodel = PeftModel.from_pretrained(base_model, "{out.name}")',
        "peft",
    )


def model_card(run: RunFolder, exported: Exported, samples: dict[str, str]) -> str:
    """The README.md of an export: front matter, how to load it, routes and teachers, results, samples,
    the graph."""
    graph = run.graph
    method = (graph.get("method") or {}).get("type", "danceopd")
    front = {"library_name": exported.library, "tags": ["fieldkit", "flow-matching", "distillation", method]}
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
        f"{training}. This folder is a {exported.kind}.",
        "",
        "## Load it",
        "",
        "```python",
        exported.load,
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
        markdown([("", run.results)])
        if run.results.scores
        else "No route had metrics in this run, so there are no results.",
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
                f"{rows} {captions}",
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


def export_run(run_folder: Path, fmt: str, out: Path, base: Path | None = None) -> Exported:
    """Export the run in ``run_folder`` as ``fmt`` (diffusers or peft) to the new folder ``out``, with its
    model card; nothing is left at ``out`` if the export fails."""
    if fmt not in FORMATS:
        raise FieldkitError(f"unknown export format {fmt!r}", hint=f"choose one of: {', '.join(FORMATS)}")
    if out.exists():
        raise FieldkitError(f"{out} already exists", hint="choose a new folder with -o, or remove it")
    run = read_run(run_folder)
    with atomic_path(out) as tmp:  # the exporters create the folder
        exported = _diffusers(run, tmp, base) if fmt == "diffusers" else _peft(run, tmp)
        samples = {}
        for grid in run.grids:
            (tmp / "samples").mkdir(exist_ok=True)
            check_regular(grid.png, "sample grid")
            shutil.copy2(grid.png, tmp / "samples" / f"{grid.route}.png")
            samples[grid.route] = f"samples/{grid.route}.png"
        final = Exported(out, exported.kind, exported.load.replace(tmp.name, out.name), exported.library)
        (tmp / "README.md").write_text(model_card(run, final, samples))
    return final


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
