"""Checkpoints of fieldkit's own models: a folder with ``config.json`` and ``model.safetensors``.

The layout matches diffusers' ``save_pretrained``/``from_pretrained`` for one model. ``config.json`` holds
the pydantic config plus ``"_class_name"``; the weights are safetensors, never a pickle. A new folder is
written in a temporary sibling and renamed into place, so a failed save leaves nothing behind and an
existing folder is only touched once both new files are complete.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from pydantic import BaseModel, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from fieldkit.atomic import atomic_path, atomic_write
from fieldkit.capabilities import SavesPretrained
from fieldkit.errors import CheckpointError
from fieldkit.field import ModuleField
from fieldkit.files import MiB, check_regular, read_text, save_safetensors
from fieldkit.memory_guard import check_model_fits
from fieldkit.owned import check_target

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MAX_CONFIG_BYTES = MiB
_LAYOUT_HINT = f"a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME}, as written by save_pretrained"


class PretrainedField(ModuleField):
    """A :class:`~fieldkit.field.ModuleField` built from a pydantic config, saved as config + safetensors.

    Subclasses set ``config_class`` and build themselves from ``__init__(config)``.
    """

    config_class: ClassVar[type[BaseModel]]

    def __init__(self, config: BaseModel) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def state_numel(cls, config: BaseModel) -> int:
        """How many values the state dict of a model built from ``config`` holds, without allocating it
        (built on the meta device; subclasses with repeated blocks may count faster)."""
        with torch.device("meta"):
            return _numel(cls(config))

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to folder ``path`` (created if missing)."""
        path = check_target(
            path, "model folder", folder=True, error=CheckpointError
        )  # not a link, a file or a device
        config = json.dumps(
            {"_class_name": type(self).__name__, **self.config.model_dump(mode="json")}, indent=2
        )
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        if not path.exists():  # a new folder appears whole
            with atomic_path(path, folder=True) as tmp:
                (tmp / CONFIG_NAME).write_text(config + "\n")
                save_safetensors(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
            return path
        # Into an existing folder: each file is replaced atomically; other files stay.
        with atomic_path(path / WEIGHTS_NAME) as tmp:
            save_safetensors(tensors, tmp, metadata={"format": "pt"})
        atomic_write(path / CONFIG_NAME, config + "\n")
        return path

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        dtype: torch.dtype | None = None,
        *,
        device: torch.device | str = "cpu",
    ) -> Self:
        """Load a folder written by :meth:`save_pretrained`; ``dtype=None`` keeps the stored dtype.

        Raises :class:`~fieldkit.errors.CheckpointError` for a missing or unreadable file, a config of
        another model or with invalid values, and weights that do not fit the config.
        """
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"no model folder at {path}", hint=_LAYOUT_HINT)
        config = _read_config(path / CONFIG_NAME, cls.__name__, cls.config_class)
        _check_size(cls.state_numel(config), path / WEIGHTS_NAME)  # before anything is allocated
        check_model_fits(lambda: cls(config), torch.device(device), f"the model in {path}")
        state = _read_weights(path / WEIGHTS_NAME, device)
        model = cls(config)
        _check_fit(model.state_dict(), state, path / WEIGHTS_NAME)
        stored = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
        model.to(device=device, dtype=dtype or stored)
        model.load_state_dict(state)
        return model.eval()


def _numel(module: torch.nn.Module) -> int:
    return sum(t.numel() for t in module.state_dict().values())


def read_config_json(file: Path) -> Any:
    """The JSON in a model folder's ``config.json`` (a regular file of at most a MiB)."""
    text = read_text(file, MAX_CONFIG_BYTES, CONFIG_NAME, CheckpointError)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file} is not readable JSON: {err}", hint=_LAYOUT_HINT) from err
    except RecursionError:
        raise CheckpointError(
            f"{file} is nested too deeply to be a model config", hint=_LAYOUT_HINT
        ) from None


def _read_config(file: Path, class_name: str, config_class: type[BaseModel]) -> Any:
    if not file.exists():
        raise CheckpointError(f"{file} is missing", hint=_LAYOUT_HINT)
    try:
        raw = read_config_json(file)
    except CheckpointError as err:
        raise CheckpointError(err.message, hint=err.hint or _LAYOUT_HINT) from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file} must hold a JSON object, got {type(raw).__name__}", hint=_LAYOUT_HINT)
    kind = raw.pop("_class_name", None)
    if kind != class_name:
        raise CheckpointError(f"{file} describes a {kind!r} model, not a {class_name!r}")
    try:
        return config_class.model_validate(raw)
    except ValidationError as err:
        raise CheckpointError(
            f"{file} is not a valid {config_class.__name__}: {_problems(err)}",
            hint=f"fix {file.name}, or save the model again with save_pretrained",
        ) from err


def _problems(error: ValidationError) -> str:
    """A pydantic error on one line: each problem as ``key: what is wrong (the value given)``."""
    parts = []
    for problem in error.errors(include_url=False):
        key = ".".join(str(part) for part in problem["loc"])
        if not key:  # a check of several keys together: the input is the whole config
            parts.append(problem["msg"])
            continue
        given = "" if problem["type"] == "missing" else f" (got {_short(problem.get('input'))})"
        parts.append(f"{key}: {problem['msg']}{given}")
    return "; ".join(parts)


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to about ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_size(expected: int, file: Path) -> None:
    """Refuse, from the safetensors header alone, a config that describes a model much larger than its
    weights file (one no larger than twice the file, plus a MiB of values, is built so that the check of
    every tensor can name what differs)."""
    if not file.exists():
        raise CheckpointError(f"{file} is missing", hint=_LAYOUT_HINT)
    check_regular(file, "weights file", CheckpointError)
    try:
        with safe_open(str(file), framework="pt") as fh:
            stored = sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{file} is not a readable safetensors file (truncated or corrupted?): {err}",
            hint="save the model again with save_pretrained",
        ) from err
    if expected > 2 * stored + MiB:
        raise CheckpointError(
            f"{file} does not match its config.json: it holds {stored:,} values, the config describes a "
            f"model of {expected:,}",
            hint="the weights and config come from different models; save the model again",
        )


def _read_weights(file: Path, device: torch.device | str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file), device=str(device))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{file} is not a readable safetensors file (truncated or corrupted?): {err}",
            hint="save the model again with save_pretrained",
        ) from err


def _check_fit(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], file: Path) -> None:
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [
        f"{k}: stored {tuple(state[k].shape)}, config gives {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:4])}{', ...' if len(items) > 4 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if items
    ]
    if problems:
        raise CheckpointError(
            f"{file} does not match its config.json: " + "; ".join(problems),
            hint="the weights and config come from different models; save the model again",
        )


def save_model_folder(model: torch.nn.Module, folder: Path) -> None:
    """Write ``model`` into the existing ``folder`` as its source type reads it back: the model's own
    ``save_pretrained`` (:class:`~fieldkit.capabilities.SavesPretrained`) when it has one, else its weights
    alone as ``model.safetensors``."""
    if isinstance(model, SavesPretrained):
        model.save_pretrained(folder)
    else:
        save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, folder / WEIGHTS_NAME)
