"""Training checkpoints: safetensors for tensors, JSON for scalars, atomic writes, verified reads.

A checkpoint is a folder ``step-00000100/`` written under a temporary name and renamed when complete.
``manifest.json`` (written last) records the size and sha256 of every file; a folder whose files do not
match it is refused, and ``latest`` falls back to the newest checkpoint that verifies.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from fieldkit.atomic import atomic_path
from fieldkit.errors import CheckpointError
from fieldkit.files import MiB, read_text, save_safetensors

PREFIX = "step-"
MANIFEST = "manifest.json"
FORMAT = "fieldkit.train-state/1"
MAX_JSON = 64 * MiB  # manifest.json and state.json (an optimizer's scalars grow with its parameters)


@dataclass
class TrainState:
    """Everything a resumed run needs to continue the same loss curve."""

    step: int
    student: dict[str, Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Tensor]
    ema: dict[str, Tensor] | None = None
    scalars: dict[str, Any] = field(default_factory=dict)
    #: FSDP: student, optimizer and EMA live in the folder's shard files (torch.distributed.checkpoint),
    #: not in this object (see fieldkit.distill.sharding).
    sharded: bool = False


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, slots in state["state"].items():
        for key, value in slots.items():
            name = f"{pid}.{key}"
            if isinstance(value, Tensor):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    slots: dict[int, dict[str, Any]] = {}
    for source in (tensors, meta["scalars"]):
        for name, value in source.items():
            pid, key = name.split(".", 1)
            slots.setdefault(int(pid), {})[key] = value
    return {"state": slots, "param_groups": meta["param_groups"]}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cpu(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def checkpoint_path(root: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives under ``root``."""
    return root / f"{PREFIX}{step:08d}"


def save_checkpoint(root: Path, state: TrainState, keep_last: int) -> Path:
    """Write ``root/step-XXXXXXXX`` atomically and keep only the newest ``keep_last`` checkpoints."""
    final = checkpoint_path(root, state.step)
    with atomic_path(final, folder=True) as tmp:  # a failed write (disk full, ...) leaves no half folder
        write_state(tmp, state)
    prune_checkpoints(root, keep_last)
    return final


def prune_checkpoints(root: Path, keep_last: int) -> None:
    """Remove all but the newest ``keep_last`` checkpoints under ``root``."""
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def write_state(tmp: Path, state: TrainState) -> None:
    """Write ``state`` into the folder ``tmp`` and, last, its manifest (which also covers shard files
    already written there)."""
    opt_meta: dict[str, Any] | None = None
    if not state.sharded:
        opt_tensors, opt_meta = _flatten_optimizer(state.optimizer)
        save_safetensors(_cpu(state.student), tmp / "student.safetensors")
        save_safetensors(opt_tensors, tmp / "optimizer.safetensors")
        if state.ema is not None:
            save_safetensors(_cpu(state.ema), tmp / "ema.safetensors")
    save_safetensors(_cpu(state.rng), tmp / "rng.safetensors")
    meta = {
        "format": FORMAT,
        "step": state.step,
        "optimizer": opt_meta,
        "scalars": state.scalars,
        "sharded": state.sharded,
    }
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
    (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files}, indent=1))


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under ``root``, oldest first (temporary folders are ignored)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError unless every file listed in the manifest is present and intact."""
    manifest_path = path / MANIFEST
    if not path.is_dir():  # a typo such as `--resume last`, not a checkpoint cut short
        raise CheckpointError(
            f"{path}: no such checkpoint folder",
            hint="resume with `--resume latest` (the newest good checkpoint) or a checkpoint folder, e.g. "
            "RUN/checkpoints/step-00000100",
        )
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{path}: not a complete checkpoint (no {MANIFEST})",
            hint="it was interrupted while being written; resume from an earlier one",
        )
    try:
        manifest = json.loads(read_text(manifest_path, MAX_JSON, MANIFEST, CheckpointError))
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: {MANIFEST} is unreadable") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(info, dict)
        and _count(info.get("bytes")) is not None
        and isinstance(info.get("sha256"), str)
        for info in files.values()
    ):
        raise CheckpointError(
            f"{path}: {MANIFEST} is malformed (its files must map each name to its bytes and sha256)"
        )
    if manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: unknown checkpoint format {manifest.get('format')!r}, expected {FORMAT!r}"
        )
    for name, info in files.items():
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise CheckpointError(f"{path}: {MANIFEST} names a file outside the checkpoint: {name!r}")
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if file.stat().st_size != info["bytes"]:
            raise CheckpointError(
                f"{path}: {name} is truncated ({file.stat().st_size} of {info['bytes']} bytes)"
            )
        if _sha256(file) != info["sha256"]:
            raise CheckpointError(f"{path}: {name} is corrupted (checksum mismatch)")


def load_checkpoint(path: Path) -> TrainState:
    """Read a verified checkpoint folder."""
    verify_checkpoint(path)
    try:
        meta: Any = json.loads(read_text(path / "state.json", MAX_JSON, "state.json", CheckpointError))
        if not isinstance(meta, dict):
            raise ValueError("state.json is not a JSON object")
        sharded = meta.get("sharded") is True
        student, optimizer, ema = {}, {}, None
        if not sharded:
            student = load_file(path / "student.safetensors")
            _check_optimizer_meta(meta.get("optimizer"))
            optimizer = _unflatten_optimizer(load_file(path / "optimizer.safetensors"), meta["optimizer"])
            ema_file = path / "ema.safetensors"
            ema = load_file(ema_file) if ema_file.is_file() else None
        rng = load_file(path / "rng.safetensors")
    except (SafetensorError, OSError, KeyError, ValueError, AttributeError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {exc}") from None
    step: Any = meta.get("step")  # checked with the rest in _check_state
    state = TrainState(step, student, optimizer, rng, ema, meta.get("scalars", {}), sharded)
    _check_state(path, state)
    return state


def load_weights(path: Path) -> TrainState:
    """Read a verified checkpoint with its student (and EMA) weights whole, in this one process: an FSDP
    checkpoint's shards are gathered from its files (torch.distributed.checkpoint, no process group)."""
    state = load_checkpoint(path)
    if state.sharded:
        import tempfile

        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        if not (path / ".metadata").is_file():
            raise CheckpointError(f"{path}: cannot read its FSDP shards: it has no .metadata file")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                dcp_to_torch_save(path, Path(tmp) / "whole.pt")
                whole = torch.load(Path(tmp) / "whole.pt", weights_only=True)
                state.student, state.ema = dict(whole["model"]), whole.get("ema")
            except (CheckpointException, OSError, RuntimeError, ValueError, KeyError) as exc:
                raise CheckpointError(f"{path}: cannot read its FSDP shards: {exc}") from None
    return state


def _check_state(path: Path, state: TrainState) -> None:
    """What a checkpoint must hold whatever graph resumes it: its own step, RNG states, scalars."""
    step = state.step
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: state.json has no valid step ({step!r})")
    named = path.name[len(PREFIX) :]
    if path.name.startswith(PREFIX) and named.isdigit() and int(named) != step:
        raise CheckpointError(f"{path}: state.json says step {step}, the folder step {int(named)}")
    for name, tensor in state.rng.items():
        if tensor.dtype != torch.uint8 or tensor.dim() != 1:
            raise CheckpointError(f"{path}: the RNG state {name!r} is not a byte vector")
    if not isinstance(state.scalars, dict):
        raise CheckpointError(f"{path}: state.json has no valid scalars")
    scalars = state.scalars
    for key, least in (("processes", 1), ("bad_steps", 0)):
        if key in scalars and (_count(scalars[key]) is None or scalars[key] < least):
            raise CheckpointError(f"{path}: state.json's {key} ({scalars[key]!r}) is not a count")
    schedule = scalars.get("lr_schedule")
    if schedule is not None and not (
        isinstance(schedule, dict)
        and isinstance(schedule.get("last_epoch", 0), int)
        and schedule.get("last_epoch", 0) >= -1
        and isinstance(schedule.get("base_lrs", []), list)
        and all(_finite(lr) for lr in schedule.get("base_lrs", []))
        and all(_plain(v) for v in schedule.values())
    ):
        raise CheckpointError(f"{path}: state.json's lr_schedule is not a learning-rate schedule's state")


def _count(value: Any) -> int | None:
    """``value`` when it is a non-negative int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _plain(value: Any) -> bool:
    """JSON scalars, and lists and string-keyed objects of them (what a scheduler's state holds)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items())


def _check_optimizer_meta(meta: Any) -> None:
    """Raise ValueError unless ``meta`` is a flattened optimizer state: param_groups (mappings, each with a
    list of parameter indices) and scalars named ``INDEX.SLOT``."""
    groups = meta.get("param_groups") if isinstance(meta, dict) else None
    if not isinstance(groups, list) or not all(
        isinstance(g, dict)
        and isinstance(g.get("params"), list)
        and all(_count(i) is not None for i in g["params"])
        for g in groups
    ):
        raise ValueError("its optimizer's param_groups are not a list of groups of parameter indices")
    if not isinstance(meta.get("scalars"), dict):
        raise ValueError("its optimizer's scalars are not a mapping")


# Optimizer slots that hold one value per parameter entry (Adam's moments, SGD's momentum).
_PARAM_SHAPED = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


def check_optimizer_state(path: Path, optimizer: dict[str, Any], params: Sequence[Tensor]) -> None:
    """Raise CheckpointError unless the optimizer state covers ``params`` with slots of their shapes."""
    groups = optimizer.get("param_groups") or []
    listed = sum(len(g.get("params", [])) for g in groups)
    if listed != len(params):
        raise CheckpointError(
            f"{path}: its optimizer state is for {listed} parameter tensors, this run trains {len(params)}"
        )
    for pid, slots in optimizer.get("state", {}).items():
        if not 0 <= int(pid) < len(params):
            raise CheckpointError(f"{path}: its optimizer state names parameter {pid}, which does not exist")
        for key in _PARAM_SHAPED:
            value = slots.get(key)
            if isinstance(value, Tensor) and value.shape != params[int(pid)].shape:
                raise CheckpointError(
                    f"{path}: optimizer slot {pid}.{key} has shape {tuple(value.shape)}, "
                    f"its parameter {tuple(params[int(pid)].shape)}"
                )
        step = slots.get("step")
        if isinstance(step, Tensor) and not bool(torch.isfinite(step).all()):
            raise CheckpointError(f"{path}: optimizer slot {pid}.step is not finite")


def load_resumable(
    root: Path, which: str, check: Callable[[Path, TrainState], None]
) -> tuple[Path | None, TrainState | None, list[CheckpointError]]:
    """The checkpoint to resume from, read and accepted by ``check`` (which raises CheckpointError for a
    state that does not fit the run): for ``latest`` the newest such one, older ones standing in for those
    that fail (their errors are returned, newest first); a path must itself pass."""
    candidates = [Path(which)] if which != "latest" else list(reversed(list_checkpoints(root)))
    skipped: list[CheckpointError] = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
            check(path, state)
        except CheckpointError as exc:
            if which != "latest":
                raise
            skipped.append(exc)
            continue
        return path, state, skipped
    return None, None, skipped


def resolve_resume(root: Path, which: str) -> tuple[Path | None, list[str]]:
    """``latest``: the newest checkpoint under ``root`` that verifies (with the reasons others were skipped);
    a path: that checkpoint, which must verify."""
    if which != "latest":
        path = Path(which)
        verify_checkpoint(path)
        return path, []
    skipped = []
    for path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path)
        except CheckpointError as exc:
            skipped.append(str(exc))
            continue
        return path, skipped
    return None, skipped
