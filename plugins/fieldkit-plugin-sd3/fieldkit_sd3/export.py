"""Export a distilled SD3 student as a LoRA in the diffusers / peft format.

The engine already writes ``RUN/student/``: the student as a diffusers transformer folder (EMA weights when
on, LoRA merged), which ``SD3Transformer2DModel.from_pretrained`` loads. For a LoRA student this module also
writes the adapter alone, ``pytorch_lora_weights.safetensors`` with keys
``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` and the ``LoraConfig`` as metadata, which
``StableDiffusion3Pipeline.load_lora_weights`` loads as is: ``W x + (alpha / r) B A x`` on the base
pipeline's transformer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from torch import Tensor, nn

from fieldkit.errors import FieldkitError

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


def save_lora(state: dict[str, Tensor], folder: Path, alpha: float | None) -> Path:
    """Write peft-form LoRA tensors as a diffusers SD3 LoRA folder (``pytorch_lora_weights.safetensors``)."""
    from diffusers import StableDiffusion3Pipeline

    StableDiffusion3Pipeline.save_lora_weights(
        str(folder),
        transformer_lora_layers=state,
        transformer_lora_adapter_metadata=lora_metadata(state, alpha),
        weight_name=WEIGHT_NAME,
    )
    return folder / WEIGHT_NAME


def export_student_lora(student: nn.Module, folder: Path, alpha: float | None = None) -> Path:
    """Save the LoRA of a live student (an :class:`~fieldkit_sd3.field.SD3Field` trained with LoRA)."""
    return save_lora(peft_lora_state(dict(student.named_parameters())), folder, alpha)


def export_run_lora(run: Path, folder: Path, checkpoint: Path | None = None) -> Path:
    """Save the LoRA of a finished or running fieldkit run: the newest good checkpoint (or ``checkpoint``),
    its EMA weights when the run kept them; ``alpha`` from the run's ``graph.json``."""
    from fieldkit.distill.checkpoint import load_checkpoint, resolve_resume

    spec_file = run / "graph.json"
    if not spec_file.is_file():
        raise FieldkitError(f"{run} is not a fieldkit run folder (graph.json missing)")
    student = json.loads(spec_file.read_text()).get("student") or {}
    if student.get("train") != "lora":
        raise FieldkitError(
            f"the run in {run} trained its student in full, not through LoRA",
            hint=f"load the full student from {run / 'student'} with SD3Transformer2DModel.from_pretrained",
        )
    path, _ = resolve_resume(run / "checkpoints", str(checkpoint) if checkpoint else "latest")
    if path is None:
        raise FieldkitError(f"{run / 'checkpoints'} holds no good checkpoint")
    state = load_checkpoint(path)
    return save_lora(
        peft_lora_state(state.ema or state.student), folder, student.get("lora", {}).get("alpha")
    )
