"""Load a diffusers model (a backbone plugin's transformer) from a local folder: nothing is fetched, and the
asked dtype is checked after loading (without accelerate, diffusers may silently keep float32)."""

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
    cls_name: str, path: Path, subfolder: str | None, dtype: torch.dtype | None, *, hint: str
) -> Any:
    """``diffusers.<cls_name>.from_pretrained`` of ``path`` (a pipeline folder: its ``transformer/``; or a
    model folder), in eval mode; ``dtype=None`` keeps the stored dtype. ``hint`` says what to point at."""
    cls = getattr(importlib.import_module("diffusers"), cls_name)
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").lower() in ("1", "true", "yes"):
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # diffusers has its own switch; follow the Hub's
    sub = model_subfolder(path, subfolder)
    folder = path / sub if sub else path
    if not (folder / "config.json").is_file():
        raise FieldkitError(f"no {cls_name} at {folder} (config.json missing)", hint=hint)
    model = cls.from_pretrained(str(path), subfolder=sub, dtype=dtype, local_files_only=True)
    if dtype is not None and model.dtype != dtype:
        raise FieldkitError(
            f"{folder} loaded as {model.dtype}, not the asked {dtype}",
            hint="install accelerate (without it diffusers may ignore the dtype)",
        )
    return model.eval()


def scheduler_config(path: Path) -> dict[str, Any] | None:
    """The ``scheduler/scheduler_config.json`` of a pipeline folder, or ``None`` when it has none."""
    file = path / "scheduler" / "scheduler_config.json"
    if not file.is_file():
        return None
    try:
        return dict(json.loads(file.read_text(encoding="utf-8")))
    except (OSError, ValueError) as err:
        raise FieldkitError(f"{file}: not a readable scheduler config ({err})") from None
