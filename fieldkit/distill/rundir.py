"""Run folders: where a run may write, and the lock that keeps it the only writer.

A run writes only into an empty folder or one of its own run folders (marked by ``fieldkit-run.json``);
an unrelated non-empty folder, a file, or an empty path is refused before anything is written. While a
run is going its folder holds an advisory lock (``.fieldkit.lock``, POSIX ``lockf``, with the owner's pid
inside): a second run, or a ``--resume`` of the same folder, is refused while the first one lives. The
kernel drops the lock when its owner dies, so a lock left by a killed run is taken over with a note.

Under the lock the folder is put in order: temporary folders of interrupted writes are removed, and a
run folder without any checkpoint (killed or failed before its first one) is restarted, with a note,
whether or not ``--resume`` was asked for.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fieldkit.atomic import atomic_write, leftovers
from fieldkit.distill.checkpoint import list_checkpoints, verify_checkpoint
from fieldkit.errors import FieldkitError
from fieldkit.files import read_text
from fieldkit.owned import check_name, kind, open_owned, write_error

MARKER = "fieldkit-run.json"
LOCK = ".fieldkit.lock"
FORMAT = "fieldkit.run/1"
# What a run writes at the top of its folder: a restart removes these and nothing else.
OUTPUTS = (
    "metrics.jsonl",
    "graph.json",
    "results.json",
    "samples",
    "checkpoints",
    "student",
    "trackers",
    "report.html",
    "sessions.jsonl",
)
# What only the end of a run writes, after its last checkpoint: a folder with these and no checkpoint is a
# finished run whose checkpoints were removed, not one that failed before its first checkpoint.
FINISHED = ("student", "results.json")


@dataclass
class RunFolder:
    """An output folder held by this process: ``resume`` is what to resume from after the checks."""

    path: Path
    resume: str | None
    notes: list[str] = field(default_factory=list)
    created: bool = False  # this process made the folder (it did not exist before)
    _fd: int | None = None

    def release(self) -> None:
        """Drop the lock (the lock file stays, empty: deleting it would let two runs lock two files)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):  # the lock is dropped with the descriptor either way
            os.ftruncate(fd, 0)
        os.close(fd)

    def abandon(self) -> None:
        """Release the folder of a run that failed before it wrote anything: a folder this process made,
        holding only the run marker and the lock file, is removed with them (no debris of a failed start)."""
        self.release()
        if not self.created or self._fd is not None:
            return
        with contextlib.suppress(OSError):  # a folder that cannot be tidied stays a valid empty run folder
            if {p.name for p in self.path.iterdir()} <= {MARKER, LOCK}:
                for name in (MARKER, LOCK):
                    (self.path / name).unlink(missing_ok=True)
                self.path.rmdir()

    def __del__(self) -> None:
        self.release()


def open_run_folder(out: str | os.PathLike[str], resume: str | None) -> RunFolder:
    """Check ``out``, lock it for this process and put it in order; see the module docstring.

    Raises a FieldkitError (and writes nothing) for an empty path, a file, an unrelated non-empty folder,
    a folder another live run holds, and a folder that holds a finished run when not resuming.
    """
    folder = _checked_path(out)
    _refuse_foreign(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, f"cannot create the output folder {folder}") or exc from None
    run = RunFolder(folder, resume, created=created)
    run._fd = _lock(folder, run.notes)
    try:
        _refuse_foreign(folder)  # another process may have written it before we held the lock
        _settle(run)
    except OSError as exc:
        run.release()
        raise write_error(exc, f"cannot prepare the output folder {folder}") or exc from None
    except BaseException:
        run.release()
        raise
    return run


def _checked_path(out: str | os.PathLike[str]) -> Path:
    if not os.fspath(out).strip():
        raise FieldkitError(
            "the output folder is an empty path",
            hint="give a folder name, e.g. --out runs/mine (use --out . to mean this folder)",
        )
    folder = check_name(out, "output folder")
    if folder.is_symlink():
        raise FieldkitError(
            f"{folder} is a symbolic link; a run writes only into a real folder, never through a link",
            hint=f"give the folder it points to ({os.path.realpath(folder)}) with --out",
        )
    if folder.exists() and not folder.is_dir():
        raise FieldkitError(
            f"{folder} is a file, not a folder", hint="choose another output folder with --out"
        )
    for parent in folder.parents:
        if parent.exists() and not parent.is_dir():
            raise FieldkitError(
                f"cannot create the output folder {folder}: {parent} is a file",
                hint="choose another output folder with --out",
            )
    return folder


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` was made by a fieldkit run (it holds the run marker)."""
    return (folder / MARKER).is_file()


def _refuse_foreign(folder: Path) -> None:
    if not folder.is_dir() or is_run_folder(folder):
        return
    entries = sorted(p.name for p in folder.iterdir() if p.name != LOCK)
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise FieldkitError(
            f"{folder} is not empty ({shown}) and is not a fieldkit run folder; fieldkit writes only into "
            "an empty folder or one of its own runs, so nothing there is touched",
            hint="choose another output folder with --out (or --set run.out=PATH)",
        )


def _lock(folder: Path, notes: list[str]) -> int:
    fd = open_owned(folder / LOCK, os.O_RDWR | os.O_CREAT, "lock file")
    path = folder / LOCK
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        owner = _read_pid(fd)
        os.close(fd)
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            raise write_error(exc, f"cannot lock {path}") or exc from None
        who = f"pid {owner}" if owner else "another process"
        raise FieldkitError(
            f"{folder} is in use by another fieldkit run ({who}); two runs never write one folder",
            hint="wait for that run to end, or choose another output folder with --out",
        ) from None
    previous = _read_pid(fd)
    if previous and previous != os.getpid():
        notes.append(
            f"{folder}: took over the lock of pid {previous}, which ended without releasing it "
            "(killed or crashed)"
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _settle(run: RunFolder) -> None:
    """Under the lock: decide between refusing, resuming and (re)starting; clean temporary folders."""
    folder = run.path
    _refuse_links(folder)
    _remove_temporaries(folder, run.notes)
    run.resume, stale, notes = _decide(folder, run.resume)
    run.notes.extend(notes)
    for name in stale:
        _remove(folder / name)
    _write_marker(folder)


def _decide(folder: Path, resume: str | None) -> tuple[str | None, list[str], list[str]]:
    """What a run asking for ``resume`` does with the run folder ``folder``, deciding only (nothing
    written): the resume it gets, the earlier outputs a fresh start removes, and the notes that say so.
    Raises a FieldkitError for a folder it must not touch."""
    has_checkpoint = bool(list_checkpoints(folder / "checkpoints"))
    if resume is None and has_checkpoint:
        raise FieldkitError(
            f"{folder} already holds a run",
            hint="continue it with --resume latest, or choose another output folder with --out PATH",
        )
    notes = []
    if resume == "latest" and not has_checkpoint:
        notes.append(f"{folder} has no checkpoint to resume from: starting the run afresh")
        resume = None
    if resume is not None:
        return resume, [], notes
    finished = [name for name in FINISHED if (folder / name).exists()]
    if finished:
        raise FieldkitError(
            f"{folder} holds a finished run's outputs ({', '.join(finished)}) but none of its "
            "checkpoints (they were removed); starting afresh would replace them, so nothing was touched",
            hint="choose another output folder with --out, or move that run's outputs away first",
        )
    stale = [name for name in OUTPUTS if (folder / name).exists()]
    if stale and is_run_folder(folder):
        notes.append(
            f"{folder}: the earlier run there wrote no checkpoint; its outputs are replaced "
            f"({', '.join(stale)})"
        )
    return resume, stale, notes


def check_run_folder(out: str | os.PathLike[str], resume: str | None) -> list[str]:
    """What :func:`open_run_folder` would refuse, checked without writing, locking or creating anything
    (``--dry-run``), and an explicit ``resume`` checkpoint verified; the notes the run would print."""
    folder = _checked_path(out)
    _refuse_foreign(folder)
    if resume not in (None, "latest"):
        verify_checkpoint(Path(resume))
    if not folder.is_dir():
        fresh = f"{folder} has no checkpoint to resume from: starting the run afresh"
        return [fresh] if resume == "latest" else []
    _refuse_links(folder)
    return _decide(folder, resume)[2]


def _refuse_links(folder: Path) -> None:
    """Refuse a run folder whose own entries are links or of the wrong kind (a FIFO as metrics.jsonl, a
    link as checkpoints/): a run would write through them, or a restart remove them."""
    for name in (MARKER, *OUTPUTS):
        entry = folder / name
        try:
            mode = os.lstat(entry).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise FieldkitError(
                f"{entry} is {kind(mode)}; a run writes only files it made in its own folder, never through "
                "a link or into a device, so nothing there was touched",
                hint=f"move {entry} away, or choose another output folder with --out",
            )


def _remove_temporaries(folder: Path, notes: list[str]) -> None:
    found = leftovers(folder / "checkpoints") + leftovers(folder / "samples") + leftovers(folder)
    for path in found:
        _remove(path)
    if found:
        notes.append(f"removed {len(found)} unfinished temporary folder(s) of an interrupted write")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _write_marker(folder: Path) -> None:
    marker = folder / MARKER
    if marker.is_file():
        return
    info: dict[str, Any] = {"format": FORMAT}
    atomic_write(marker, json.dumps(info) + "\n", "run marker")


def open_for_processes(out: str | os.PathLike[str], resume: str | None, accelerator: Any) -> RunFolder:
    """:func:`open_run_folder` on the main process only (the one that writes); every other process of a
    multi-process run receives its decision, or raises its error, so all of them agree."""
    if accelerator.num_processes == 1:
        return open_run_folder(out, resume)
    from accelerate.utils import broadcast_object_list

    held: RunFolder | None = None
    decision: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            held = open_run_folder(out, resume)
            decision = [(held.resume, None, None)]
        except FieldkitError as exc:
            decision = [(None, exc.message, exc.hint)]
    broadcast_object_list(decision, from_process=0)
    chosen, message, hint = decision[0]
    if message is not None:
        raise FieldkitError(message, hint=hint)
    return held if held is not None else RunFolder(Path(os.fspath(out)), chosen)


def previous_graph(folder: Path) -> dict[str, Any] | None:
    """The graph the run's last session ran (its ``graph.json``), or None when there is none to read."""
    try:
        graph = json.loads(read_text(folder / "graph.json", MAX_GRAPH, "graph.json"))
    except (FieldkitError, ValueError, RecursionError):
        return None
    return graph if isinstance(graph, dict) else None


def graph_changes(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs between two graphs (dotted keys, sorted).

    Raises a FieldkitError for a change a resume cannot apply: another optimizer type (its saved state has
    other slots, and its first step would fail)."""
    old, new = _flatten(previous), _flatten(current)
    changes = [
        f"{key}: {json.dumps(old.get(key, MISSING))} -> {json.dumps(new.get(key, MISSING))}"
        for key in sorted(set(old) | set(new))
        if old.get(key, MISSING) != new.get(key, MISSING) and key not in NOT_SETTINGS
    ]
    before, after = old.get("run.optimizer.type"), new.get("run.optimizer.type")
    if before is not None and before != after:
        raise FieldkitError(
            f"the run was trained with run.optimizer.type {before}, and this session asks for {after}: "
            "its checkpoints hold that optimizer's state, which another optimizer cannot continue",
            hint=f"resume with --set run.optimizer.type={before}, or start a new run in another folder",
        )
    return changes


MISSING = "(unset)"
NOT_SETTINGS = ("run.out",)  # where the run folder is (it may have been moved), not how the run trains
MAX_GRAPH = 16 << 20


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}
