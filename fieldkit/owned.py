"""What fieldkit may write: only files it created or owns, and never through a link.

An output path (``-o``, ``--out``, a file in a run folder) is refused before anything is written when it is
a symbolic link (writing would change the link's target, or replace the link) or when it exists and is not
a regular file (a device such as ``/dev/full``, a FIFO, a socket; a folder where a file is meant). Files a
run appends to or locks are opened with ``O_NOFOLLOW`` and checked to be regular on the open descriptor, so
a link or a FIFO put there between the check and the open is refused too. Write failures that are the
user's to fix (space, permissions, a name too long) become one :class:`FieldkitError` naming the path.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from fieldkit.errors import FieldkitError

# Write failures that are the user's to fix (space, permissions, a file where a folder should be).
USER_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "a file grew past the size this process may write",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EEXIST: "a file is in the way",
    errno.EISDIR: "a folder is in the way",
    errno.ENAMETOOLONG: "a file name is too long",
    errno.ENOENT: "a folder on the path does not exist",
    errno.ELOOP: "a path component is a symbolic link fieldkit does not follow",
    errno.EXDEV: "the path crosses file systems",
}
_WRITE_HINT = (
    "free some space or make the folder writable, then resume with --resume latest (in the same folder: a "
    "new --out starts afresh)"
)
NAME_MAX = 255  # bytes of one path component on the file systems fieldkit writes to


def write_error(
    exc: OSError, what: str = "cannot write the run", hint: str = _WRITE_HINT
) -> FieldkitError | None:
    """A user error for a write that failed for a reason the user can fix (None for other errors)."""
    reason = USER_ERRNOS.get(exc.errno or 0)
    if reason is None:
        return None
    where = f" ({exc.filename})" if exc.filename else ""
    return FieldkitError(f"{what}: {reason}{where}", hint=hint)


def kind(mode: int) -> str:
    """What a file of ``stat`` mode ``mode`` is, in words ("a folder", "a FIFO (named pipe)", ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_name(path: str | os.PathLike[str], what: str = "output") -> Path:
    """``path`` as a Path, refused when it is empty, holds a NUL byte or a component longer than NAME_MAX."""
    text = os.fspath(path)
    if not text.strip():
        raise FieldkitError(f"the {what} path is empty", hint=f"give a path for the {what}")
    if "\0" in text:
        raise FieldkitError(f"the {what} path {text!r} holds a NUL byte", hint="remove it from the path")
    for part in Path(text).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise FieldkitError(
                f"the {what} path has a name of {len(os.fsencode(part))} bytes ({part[:40]}...), more "
                f"than the {NAME_MAX} a file system allows",
                hint="choose a shorter name",
            )
    return Path(text)


def check_target(
    path: str | os.PathLike[str],
    what: str = "output",
    *,
    folder: bool = False,
    error: type[FieldkitError] = FieldkitError,
) -> Path:
    """Refuse to write ``path`` unless it is new, or a regular file (a real folder when ``folder``) that is
    not a symbolic link: fieldkit never writes through a link, nor into a device, FIFO or socket."""
    target = check_name(path, what)
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise write_error(exc, f"cannot write the {what} {target}", "choose another path") or exc from None
    expected = stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode)
    if not expected:
        want = "a folder" if folder else "a regular file"
        raise error(
            f"{target}: the {what} is {kind(mode)}, not {want}; fieldkit writes only files it owns and "
            "never through a link or into a device, so nothing was written and nothing there was touched",
            hint=f"choose another path for the {what}",
        )
    return target


def open_owned(path: Path, flags: int, what: str, mode: int = 0o644) -> int:
    """``os.open(path, flags)`` without following a link at ``path`` (``O_NOFOLLOW``) and without blocking on
    a FIFO; the descriptor is refused (closed, FieldkitError) unless it is a regular file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            check_target(path, what)  # says what is there
        if exc.errno == errno.ENXIO:  # a FIFO without a reader, opened for writing
            raise FieldkitError(
                f"{path}: the {what} is a FIFO (named pipe), not a regular file; nothing was written",
                hint=f"remove it; fieldkit makes the {what} itself",
            ) from None
        raise write_error(exc, f"cannot open the {what} {path}") or exc from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise FieldkitError(
            f"{path}: the {what} is {kind(info.st_mode)}, not a regular file; nothing was written",
            hint=f"remove it; fieldkit makes the {what} itself",
        )
    os.set_blocking(fd, True)
    return fd


def append_line(path: Path, line: str, what: str) -> None:
    """Append ``line`` to the regular file ``path`` (created if missing), never through a link."""
    fd = open_owned(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(line)
