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
    base_config: Path | None = None,
) -> Any:
    """``diffusers.<cls_name>.from_pretrained`` of ``path`` (a pipeline folder: its ``transformer/``; or a
    model folder), in eval mode; ``dtype=None`` keeps the stored dtype; ``variant`` picks the weights files
    ``*.<variant>.safetensors``. A file ``path`` is a single-file checkpoint (``from_single_file``, the
    original or the diffusers layout) with the model config of the folder ``base_config``. ``hint`` says what
    to point at."""
    cls = getattr(importlib.import_module("diffusers"), cls_name)
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").lower() in ("1", "true", "yes"):
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # diffusers has its own switch; follow the Hub's
    if path.is_file():
        model = _single_file(cls, path, base_config, dtype)
        folder = path
    else:
        sub = model_subfolder(path, subfolder)
        folder = path / sub if sub else path
        if not (folder / "config.json").is_file():
            raise FieldkitError(f"no {cls_name} at {folder} (config.json missing)", hint=hint)
        weights = list(folder.glob("*.safetensors"))
        variants = sorted({f.suffixes[-2][1:] for f in weights if len(f.suffixes) > 1})
        if variant is None and variants and all(len(f.suffixes) > 1 for f in weights):
            raise FieldkitError(
                f"{folder} holds only the weights variant(s) {', '.join(variants)}",
                hint=f"set `variant: {variants[0]}` on the source",
            )
        model = cls.from_pretrained(
            str(path), subfolder=sub, dtype=dtype, variant=variant, local_files_only=True
        )
    if dtype is not None and model.dtype != dtype:
        raise FieldkitError(
            f"{folder} loaded as {model.dtype}, not the asked {dtype}",
            hint="install accelerate (without it diffusers may ignore the dtype)",
        )
    return model.eval()


def _single_file(cls: Any, file: Path, base_config: Path | None, dtype: torch.dtype | None) -> Any:
    """``cls.from_single_file(file)`` with the config of the folder ``base_config`` (nothing fetched)."""
    if base_config is None:
        raise FieldkitError(
            f"{file} is a single-file checkpoint: fieldkit needs the model config to read it with",
            hint="set `base_config` to the pipeline (or transformer) folder of the same model",
        )
    sub = model_subfolder(base_config, None)
    return cls.from_single_file(
        str(file),
        config=str(base_config),
        subfolder=sub,
        dtype=dtype,
        local_files_only=True,
    )


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


#: A model folder written by fieldkit (``RUN/student``) keeps its pipeline's scheduler config under this name.
SCHEDULER_FILE = "scheduler_config.json"


def scheduler_config(path: Path) -> dict[str, Any] | None:
    """The scheduler config of ``path``, or ``None`` when there is none: a pipeline folder's
    ``scheduler/``; a model folder's own ``scheduler_config.json`` (a fieldkit student); or, for the model
    folder of a pipeline (``PIPELINE/transformer``), the pipeline's ``scheduler/``."""
    candidates = [path / "scheduler" / SCHEDULER_FILE, path / SCHEDULER_FILE]
    if (path.parent / "model_index.json").is_file():
        candidates.append(path.parent / "scheduler" / SCHEDULER_FILE)
    file = next((f for f in candidates if f.is_file()), None)
    if file is None:
        return None
    try:
        config = dict(json.loads(file.read_text(encoding="utf-8")))
    except (OSError, ValueError) as err:
        raise FieldkitError(f"{file}: not a readable scheduler config ({err})") from None
    return check_scheduler(config, file)
