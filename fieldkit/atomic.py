"""Atomic writes: a file or folder is written under a temporary name next to its target, then renamed into
place, so a reader (or a crash) never sees half of it and a failed write leaves the old one untouched."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path, *, folder: bool = False) -> Iterator[Path]:
    """A temporary path next to ``path`` to write (an empty folder when ``folder``); when the block ends
    without an error it replaces ``path`` by a rename (an old folder at ``path`` is removed first), otherwise
    it is removed and ``path`` stays as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # what leftovers() finds
    _remove(tmp)
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        if folder and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically and return ``path``."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path


def leftovers(folder: Path) -> list[Path]:
    """What interrupted atomic writes left directly in ``folder`` (their temporary files and folders)."""
    return sorted(folder.glob(".*.tmp")) if folder.is_dir() else []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
