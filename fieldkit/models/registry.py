"""fieldkit's model classes by name, and :func:`load_pretrained` that picks one from a folder's config."""

from __future__ import annotations

from pathlib import Path

import torch

from fieldkit.errors import CheckpointError
from fieldkit.models.mmdit import MMDiT
from fieldkit.models.pretrained import CONFIG_NAME, PretrainedField, read_config_json

MODEL_CLASSES: dict[str, type[PretrainedField]] = {"MMDiT": MMDiT}


def load_pretrained(path: str | Path, dtype: torch.dtype | None = None) -> PretrainedField:
    """Load any fieldkit model folder; ``config.json``'s ``_class_name`` picks the class."""
    file = Path(path) / CONFIG_NAME
    raw = read_config_json(file) if file.exists() else None  # a FIFO or a device is refused, never read
    name = raw.get("_class_name") if isinstance(raw, dict) else None
    cls = MODEL_CLASSES.get(str(name))
    if cls is None:
        known = ", ".join(MODEL_CLASSES)
        raise CheckpointError(
            f"{path}: not a fieldkit model folder ({CONFIG_NAME} missing, unreadable or of class {name!r})",
            hint=f"point at a folder written by save_pretrained of one of: {known}",
        )
    return cls.from_pretrained(path, dtype=dtype)
