"""Reading small files a user hands us (graphs, model configs, manifests) without hanging or blowing up,
and checking the paths a command is about to write before it writes anything.

Only regular files are read: a FIFO, a device (a link to ``/dev/zero``) or a folder is refused before a
single byte is read (the file is opened non-blocking, so even opening a FIFO cannot wait for a writer),
and a file larger than the caller's bound is refused instead of read into memory.

A command writes a model folder only where nothing is (:func:`check_new_folder`: a new or empty folder,
not inside what it reads), and replaces a file only when it wrote it (:func:`check_replaceable`).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fieldkit.errors import FieldkitError
from fieldkit.owned import check_target, kind

MiB = 1 << 20


def check_regular(
    path: str | os.PathLike[str], what: str, error: type[FieldkitError] = FieldkitError
) -> None:
    """Raise ``error`` unless ``path`` is a regular file (links are followed; nothing is opened)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{path}: no such {what}", hint="check the path") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise error(
            f"{path}: the {what} is {kind(mode)}, not a regular file",
            hint=f"give the path of a regular {what}",
        )


def read_regular(
    path: str | os.PathLike[str],
    max_bytes: int,
    what: str,
    error: type[FieldkitError] = FieldkitError,
) -> bytes:
    """The bytes of regular file ``path`` (``what`` names it in errors), at most ``max_bytes`` of them.

    Raises ``error`` for a missing file, one that is not a regular file, and one larger than the bound.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise error(f"{p}: no such {what}", hint="check the path") from None
    except OSError as exc:
        raise error(f"{p}: cannot open the {what}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(
                f"{p}: the {what} is {kind(info.st_mode)}, not a regular file",
                hint=f"give the path of a regular {what}",
            )
        if info.st_size > max_bytes:
            raise error(
                f"{p}: the {what} is {info.st_size:,} bytes, more than the {max_bytes:,} allowed",
                hint=f"a {what} is small; check that this is the right file",
            )
        chunks = []
        left = max_bytes + 1  # the file may grow after fstat: never read more than the bound
        while left > 0:
            chunk = os.read(fd, min(left, MiB))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise error(f"{p}: cannot read the {what}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise error(f"{p}: the {what} is more than the {max_bytes:,} bytes allowed")
    return data


def read_text(
    path: str | os.PathLike[str],
    max_bytes: int,
    what: str,
    error: type[FieldkitError] = FieldkitError,
) -> str:
    """:func:`read_regular` decoded as UTF-8 (a decoding error is an ``error`` too)."""
    data = read_regular(path, max_bytes, what, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: the {what} is not UTF-8 text: {exc}") from None


def save_safetensors(tensors: dict[str, Any], path: str | os.PathLike[str], **kwargs: Any) -> None:
    """``safetensors.torch.save_file``, whose write failures (disk full, a file too large, a read-only
    folder) surface as the OSError they are instead of a SafetensorError that hides the errno."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), **kwargs)
    except SafetensorError as exc:
        found = re.search(r"os error (\d+)", str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from exc


def read_head(path: str | os.PathLike[str], size: int, what: str) -> bytes:
    """The first ``size`` bytes of regular file ``path`` (fewer when it is shorter), however large it is;
    ``what`` names it in the FieldkitError for a file that cannot be read or is not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise FieldkitError(f"{path}: the {what} is {kind(mode)}, not a regular file")
            return os.read(fd, size)
        finally:
            os.close(fd)
    except OSError as exc:
        raise FieldkitError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def check_new_folder(
    path: str | os.PathLike[str], what: str, sources: Sequence[str | os.PathLike[str]] = ()
) -> Path:
    """Refuse to write the folder ``path`` (``what`` names it) unless it is new or empty, and outside every
    folder of ``sources`` (what the command reads): a link, a file, a folder that holds anything (a user's
    files, another model) and the source itself are refused before anything is read or written."""
    target = check_target(path, what, folder=True)
    resolved = target.resolve()
    for source in sources:
        folder = Path(source).resolve()
        if resolved == folder or folder in resolved.parents:
            where = "is" if resolved == folder else "is inside"
            raise FieldkitError(
                f"{target}: the {what} {where} {source}, the folder it is made from; nothing was written",
                hint=f"give the {what} a new path outside {source}",
            )
    if target.is_dir() and any(target.iterdir()):
        raise FieldkitError(
            f"{target}: the {what} already exists and is not empty; nothing was written",
            hint=f"give the {what} a new path, or remove this folder first",
        )
    return target


def check_replaceable(path: str | os.PathLike[str], what: str, ours: Callable[[Path], bool]) -> Path:
    """Refuse to write the file ``path`` (``what`` names it) when it exists and ``ours(path)`` says it is not
    a ``what`` that fieldkit wrote: a command rewrites its own output, never a user's file (nor a link, a
    folder or a device, :func:`fieldkit.owned.check_target`)."""
    target = check_target(path, what)
    if target.exists() and not ours(target):
        raise FieldkitError(
            f"{target} already exists and is not a {what} fieldkit wrote; nothing was written",
            hint=f"choose another path for the {what} with -o, or remove that file first",
        )
    return target
