"""LoRA weights of a diffusers transformer in the diffusers / peft file format, for any backbone plugin.

``pytorch_lora_weights.safetensors`` holds ``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` and the
``LoraConfig`` as metadata; a pipeline's ``load_lora_weights`` loads it as is: ``W x + (alpha / r) B A x`` on
the base pipeline's transformer. The pipeline class (``StableDiffusion3Pipeline``, ``ZImagePipeline``, ...)
is named by the caller and imported from diffusers when a file is written.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fieldkit.errors import FieldkitError

if TYPE_CHECKING:  # plugins add their export command at startup: that must not import torch
    import click
    from torch import Tensor, nn

ADAPTER = "default"
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_KEY = re.compile(r"^(?:transformer\.)?(?P<module>.+)\.(?P<kind>lora_[AB])\.(?P<adapter>[^.]+)\.weight$")


def peft_lora_state(state: dict[str, Tensor], adapter: str = ADAPTER) -> dict[str, Tensor]:
    """A student's LoRA tensors (``transformer.<module>.lora_A.<adapter>.weight``, as fieldkit names them)
    renamed to peft's saved form (``<module>.lora_A.weight``), relative to the transformer."""
    out = {}
    for key, value in state.items():
        match = _KEY.match(key)
        if match and match["adapter"] == adapter:
            out[f"{match['module']}.{match['kind']}.weight"] = value.detach().cpu().contiguous()
    if not out:
        raise FieldkitError(
            f"no LoRA weights of adapter {adapter!r} found", hint="was the student trained with lora?"
        )
    return out


def lora_metadata(state: dict[str, Tensor], alpha: float | None) -> dict[str, object]:
    """The ``LoraConfig`` of peft-form LoRA tensors: rank from ``lora_A``, targets from the module names."""
    ranks = {v.shape[0] for k, v in state.items() if k.endswith("lora_A.weight")}
    if len(ranks) != 1:
        raise FieldkitError(f"the LoRA tensors have several ranks {sorted(ranks)}; expected one")
    rank = ranks.pop()
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in state})
    return {
        "r": rank,
        "lora_alpha": alpha or rank,
        "target_modules": modules,
        "lora_dropout": 0.0,
        "bias": "none",
    }


def save_lora(pipeline: str, state: dict[str, Tensor], folder: Path, alpha: float | None) -> Path:
    """Write peft-form LoRA tensors as a diffusers LoRA folder (``<pipeline>.save_lora_weights``)."""
    cls = getattr(importlib.import_module("diffusers"), pipeline)
    cls.save_lora_weights(
        str(folder),
        transformer_lora_layers=state,
        transformer_lora_adapter_metadata=lora_metadata(state, alpha),
        weight_name=WEIGHT_NAME,
    )
    return folder / WEIGHT_NAME


def export_student_lora(pipeline: str, student: nn.Module, folder: Path, alpha: float | None = None) -> Path:
    """Save the LoRA of a live student (a field over a diffusers transformer, trained with LoRA)."""
    return save_lora(pipeline, peft_lora_state(dict(student.named_parameters())), folder, alpha)


def export_run_lora(pipeline: str, run: Path, folder: Path, checkpoint: Path | None = None) -> Path:
    """Save the LoRA of a finished or running fieldkit run: the newest good checkpoint (or ``checkpoint``),
    its EMA weights when the run kept them; ``alpha`` from the run's ``graph.json``."""
    from fieldkit.distill.checkpoint import load_weights, resolve_resume

    spec_file = run / "graph.json"
    if not spec_file.is_file():
        raise FieldkitError(f"{run} is not a fieldkit run folder (graph.json missing)")
    student = json.loads(spec_file.read_text()).get("student") or {}
    if student.get("train") != "lora":
        raise FieldkitError(
            f"the run in {run} trained its student in full, not through LoRA",
            hint=f"load the full student from {run / 'student'} with the transformer's from_pretrained",
        )
    path, _ = resolve_resume(run / "checkpoints", str(checkpoint) if checkpoint else "latest")
    if path is None:
        raise FieldkitError(f"{run / 'checkpoints'} holds no good checkpoint")
    state = load_weights(path)
    alpha = student.get("lora", {}).get("alpha")
    return save_lora(pipeline, peft_lora_state(state.ema or state.student), folder, alpha)


def random_lora(
    pipeline: str,
    transformer: Any,  # a diffusers model: add_adapter is its peft mixin's, not nn.Module's
    targets: tuple[str, ...],
    out: Path,
    *,
    rank: int = 4,
    seed: int = 0,
    std: float = 0.05,
) -> Path:
    """Write a random LoRA (``B != 0``) for ``transformer``'s ``targets``: a stand-in, in tests and tiny
    examples, for an edit or style LoRA trained elsewhere. ``transformer`` is left with the adapter in it."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    cls = getattr(importlib.import_module("diffusers"), pipeline)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets))
    transformer.add_adapter(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=g) * std)
    cls.save_lora_weights(
        str(out),
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=config.to_dict(),  # type: ignore[no-untyped-call]  # peft: unannotated
    )
    return out


def add_export_command(cli: click.Group, name: str, pipeline: str, help_text: str) -> None:
    """Register ``fieldkit NAME RUN OUT [--checkpoint DIR]``: :func:`export_run_lora` for ``pipeline``."""
    import click

    @cli.command(name=name, help=help_text)
    @click.argument("run", type=click.Path(path_type=Path, exists=True, file_okay=False))
    @click.argument("out", type=click.Path(path_type=Path, file_okay=False))
    @click.option(
        "--checkpoint",
        type=click.Path(path_type=Path, exists=True, file_okay=False),
        help="A checkpoint folder of RUN (default: the newest good one).",
    )
    def export(run: Path, out: Path, checkpoint: Path | None) -> None:
        click.echo(f"wrote {export_run_lora(pipeline, run, out, checkpoint)}")
