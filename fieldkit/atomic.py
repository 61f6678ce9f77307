"""Atomic writes: a file or folder is written under a temporary name next to its target, then renamed into
place, so a reader (or a crash) never sees half of it and a failed write leaves the old one untouched.

The target must be new or one fieldkit may replace (:func:`fieldkit.owned.check_target`): a symbolic link,
a device, a FIFO or a socket at the target is refused before anything is written, and checked again just
before the rename."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fieldkit.owned import check_target


@contextmanager
def atomic_path(path: Path, *, folder: bool = False, what: str = "output") -> Iterator[Path]:
    """A temporary path next to ``path`` to write (an empty folder when ``folder``); when the block ends
    without an error it replaces ``path`` by a rename (an old folder at ``path`` is removed first), otherwise
    it is removed and ``path`` stays as it was. ``what`` names the target in the error that refuses a link
    or a non-regular file there."""
    check_target(path, what, folder=folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # what leftovers() finds
    _remove(tmp)
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        check_target(path, what, folder=folder)  # nothing was put there while the block ran
        if folder and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def atomic_write(path: Path, data: str | bytes, what: str = "output") -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically and return ``path``."""
    with atomic_path(path, what=what) as tmp:
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
