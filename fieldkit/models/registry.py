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
        raise _not_a_model_folder(Path(path), name)
    return cls.from_pretrained(path, dtype=dtype)


def _not_a_model_folder(path: Path, name: object) -> CheckpointError:
    """Why ``path`` (whose config names class ``name``) loads as no fieldkit model, said for what it is: a
    training checkpoint, a diffusers pipeline folder, or another folder."""
    if (path / "state.json").is_file():  # every training checkpoint holds one (fieldkit.distill.checkpoint)
        run = path.parent.parent if path.parent.name == "checkpoints" else Path("RUN")
        return CheckpointError(
            f"{path}: a training checkpoint, not a model folder",
            hint=f"export its student as a model folder with `fieldkit export {run} --checkpoint {path}`, "
            f"or use the student a finished run wrote, {run / 'student'}",
        )
    if (path / "model_index.json").is_file():
        return CheckpointError(
            f"{path}: a diffusers pipeline folder, not a model folder",
            hint=f"give the model folder inside it, e.g. {path / 'transformer'}",
        )
    return CheckpointError(
        f"{path}: not a fieldkit model folder ({CONFIG_NAME} missing, unreadable or of class {name!r})",
        hint=f"point at a folder written by save_pretrained of one of: {', '.join(MODEL_CLASSES)}",
    )
