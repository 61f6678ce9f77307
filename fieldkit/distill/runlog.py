"""What a run writes as it goes: ``metrics.jsonl``, strict JSON lines trimmed to the checkpoint on resume."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console

from fieldkit.atomic import atomic_write
from fieldkit.errors import FieldkitError
from fieldkit.files import read_regular
from fieldkit.owned import append_line


class RunLog:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and counts each route's steps and losses
    (the run's result). Only the main process writes; other processes get ``enabled=False``. What the
    console shows is :mod:`fieldkit.distill.console`'s."""

    def __init__(
        self, out: Path | None, enabled: bool, console: Console | None = None, quiet: bool = False
    ) -> None:
        self.enabled, self.quiet = enabled, quiet
        self.console = console or Console(stderr=True)
        self.path = out / "metrics.jsonl" if out is not None else None
        self.route_loss: dict[str, list[float]] = defaultdict(list)
        self.route_steps: dict[str, int] = defaultdict(int)

    def log(self, record: dict[str, Any]) -> None:
        """Count an update's record (step, route, loss, ...)."""
        route = str(record.get("route", "-"))
        loss = record.get("loss")
        applied = record.get("finite", True) is not False  # a skipped (non-finite) update is no step
        for name in route.split("+"):
            # A route's own loss where the update mixed routes (G = M), else the update's loss.
            value = record.get(f"loss/{name}", loss)
            if isinstance(value, float) and math.isfinite(value):
                self.route_loss[name].append(value)
            if applied:
                self.route_steps[name] += 1

    def write(self, record: dict[str, Any]) -> None:
        """Append a record (an interval's means, or a skipped update) to ``metrics.jsonl``."""
        if self.enabled and self.path is not None:
            append_line(self.path, json_line(record), "metrics log")

    def note(self, message: str) -> None:
        """Print a note on the console (not when quiet)."""
        if self.enabled and not self.quiet:
            self.console.print(message)


MAX_METRICS = 1 << 30  # bytes of metrics.jsonl read back on resume (a long run writes a few MB)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def strict_json(value: Any, indent: int | None = None) -> str:
    """Strict JSON: a non-finite float (NaN, inf) is written as ``null``, never as the ``NaN``/``Infinity``
    that Python's json writes by default and that JSON does not have."""
    return json.dumps(_finite(value), allow_nan=False, indent=indent)


def json_line(record: dict[str, Any]) -> str:
    """One line of strict JSON (:func:`strict_json`)."""
    return strict_json(record) + "\n"


def trim_metrics(path: Path, step: int) -> list[str]:
    """Keep the lines of ``metrics.jsonl`` up to ``step`` (the checkpoint a run resumes from), rewritten
    atomically; returns notes. A torn last line (a write cut short by a kill or a full disk) is dropped
    with a note; an unreadable line before the last one is an error that names the file and line."""
    if not path.exists():
        return []
    lines = read_regular(path, MAX_METRICS, "metrics log").decode("utf-8", errors="replace").splitlines()
    kept, notes = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            if not isinstance(record.get("step", 0), int) or isinstance(record.get("step"), bool):
                raise ValueError(f"its step {record.get('step')!r} is not a whole number")
        except ValueError as exc:
            if number == len(lines):
                notes.append(f"{path}:{number}: dropped a torn last line (an interrupted write)")
                continue
            raise FieldkitError(
                f"{path}:{number}: not a line of metrics ({exc})",
                hint="fix or delete that line (the checkpoints do not depend on it), then resume again",
            ) from None
        if record.get("step", 0) <= step:
            kept.append(json_line(record))
    atomic_write(path, "".join(kept))
    return notes
