"""Load a diffusers model (a backbone plugin's transformer) from a local folder, or build one from a config.

Nothing is fetched, and the asked dtype is checked after loading (without accelerate, diffusers may silently
keep float32). A pipeline's scheduler config is read and refused when fieldkit's Euler sampler cannot
reproduce it.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from fieldkit.errors import FieldkitError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_subfolder(path: Path, subfolder: str | None, default: str = "transformer") -> str | None:
    """``subfolder`` if given (``''`` forces ``path``); else ``default`` when ``path`` is a pipeline folder
    that has one; else ``None`` (``path`` is the model folder itself)."""
    if subfolder is not None:
        return subfolder or None
    return default if (path / default / "config.json").is_file() else None


def load_model(
    cls_name: str,
    path: Path,
    subfolder: str | None,
    dtype: torch.dtype | None,
    *,
    hint: str,
    variant: str | None = None,
) -> Any:
    """``diffusers.<cls_name>.from_pretrained`` of ``path`` (a pipeline folder: its ``transformer/``; or a
    model folder), in eval mode; ``dtype=None`` keeps the stored dtype; ``variant`` picks the weights files
    ``*.<variant>.safetensors``. ``hint`` says what to point at."""
    cls = getattr(importlib.import_module("diffusers"), cls_name)
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").lower() in ("1", "true", "yes"):
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # diffusers has its own switch; follow the Hub's
    sub = model_subfolder(path, subfolder)
    folder = path / sub if sub else path
    if not (folder / "config.json").is_file():
        raise FieldkitError(f"no {cls_name} at {folder} (config.json missing)", hint=hint)
    model = cls.from_pretrained(str(path), subfolder=sub, dtype=dtype, variant=variant, local_files_only=True)
    if dtype is not None and model.dtype != dtype:
        raise FieldkitError(
            f"{folder} loaded as {model.dtype}, not the asked {dtype}",
            hint="install accelerate (without it diffusers may ignore the dtype)",
        )
    return model.eval()


def build_model(
    cls_name: str, config: dict[str, Any], seed: int = 0, dtype: torch.dtype | None = None
) -> Any:
    """A freshly initialised ``diffusers.<cls_name>.from_config(config)``, seeded, in eval mode."""
    cls = getattr(importlib.import_module("diffusers"), cls_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls.from_config(config)
    return (model.to(dtype) if dtype is not None else model).eval()


#: The scheduler whose steps fieldkit's Euler sampler reproduces: ``x <- x + (sigma_next - sigma) v``.
EULER = "FlowMatchEulerDiscreteScheduler"


def check_scheduler(config: dict[str, Any], where: Path) -> dict[str, Any]:
    """``config`` when fieldkit's Euler sampler steps exactly as the scheduler does; else a FieldkitError:
    another scheduler class (Heun, ...) or stochastic sampling (noise re-injected at every step)."""
    name = config.get("_class_name", EULER)
    if name != EULER:
        raise FieldkitError(
            f"{where}: the pipeline's scheduler is {name}; fieldkit samples and rolls out with Euler steps "
            f"({EULER}) and cannot reproduce it",
            hint=f"use a pipeline folder whose scheduler is {EULER}, or set flow.schedule to shift",
        )
    if config.get("stochastic_sampling"):
        raise FieldkitError(
            f"{where}: the scheduler samples stochastically (stochastic_sampling: true); fieldkit's Euler "
            "sampler is deterministic and cannot reproduce it",
            hint="set stochastic_sampling to false in the scheduler config",
        )
    return config


def scheduler_config(path: Path) -> dict[str, Any] | None:
    """The ``scheduler/scheduler_config.json`` of a pipeline folder, or ``None`` when it has none."""
    file = path / "scheduler" / "scheduler_config.json"
    if not file.is_file():
        return None
    try:
        config = dict(json.loads(file.read_text(encoding="utf-8")))
    except (OSError, ValueError) as err:
        raise FieldkitError(f"{file}: not a readable scheduler config ({err})") from None
    return check_scheduler(config, file)
