"""Export a distilled SD3 student as a LoRA in the diffusers / peft format.

The engine already writes ``RUN/student/``: the student as a diffusers transformer folder (EMA weights when
on, LoRA merged), which ``SD3Transformer2DModel.from_pretrained`` loads. For a LoRA student this module also
writes the adapter alone (:mod:`fieldkit.models.lora_files`), which
``StableDiffusion3Pipeline.load_lora_weights`` loads as is: ``W x + (alpha / r) B A x`` on the base pipeline's
transformer.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from fieldkit.models import lora_files

PIPELINE = "StableDiffusion3Pipeline"


def export_student_lora(student: nn.Module, folder: Path, alpha: float | None = None) -> Path:
    """Save the LoRA of a live student (an :class:`~fieldkit_sd3.field.SD3Field` trained with LoRA)."""
    return lora_files.export_student_lora(PIPELINE, student, folder, alpha)
