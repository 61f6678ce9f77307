"""Reading small files a user hands us (graphs, model configs, manifests) without hanging or blowing up.

Only regular files are read: a FIFO, a device (a link to ``/dev/zero``) or a folder is refused before a
single byte is read (the file is opened non-blocking, so even opening a FIFO cannot wait for a writer),
and a file larger than the caller's bound is refused instead of read into memory.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from fieldkit.errors import FieldkitError
from fieldkit.owned import kind

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
