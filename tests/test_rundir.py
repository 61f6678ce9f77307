"""Run folders: an unrelated folder, a file or an empty path is refused and left as it was; a live run's lock
keeps every other process out (real second processes); a killed run's lock is taken over with a note;
a folder without a checkpoint restarts; temporary folders of interrupted writes are removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fieldkit.distill.rundir import LOCK, MARKER, open_run_folder
from fieldkit.errors import FieldkitError
from fieldkit.owned import write_error

HOLDER = """
import sys
from fieldkit.distill.rundir import open_run_folder
folder = open_run_folder(sys.argv[1], None)
print("held", flush=True)
sys.stdin.read()
folder.release()
"""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def holder(tmp_path):
    """Start a second process that holds the lock of a folder until its stdin closes."""
    procs: list[subprocess.Popen] = []

    def start(folder: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        line = proc.stdout.readline()
        assert line == "held\n", proc.stderr.read()
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_an_unrelated_folder_is_refused_and_left_untouched(tmp_path):
    user = tmp_path / "mine"
    (user / "student").mkdir(parents=True)
    (user / "student" / "notes.txt").write_text("keep me")
    (user / "graph.json").write_text("{}")
    before = snapshot(user)
    with pytest.raises(FieldkitError, match="not a fieldkit run folder") as err:
        open_run_folder(user, None)
    assert "graph.json" in err.value.message and "--out" in err.value.hint
    with pytest.raises(FieldkitError, match="not a fieldkit run folder"):
        open_run_folder(user, "latest")
    assert snapshot(user) == before and sorted(p.name for p in user.iterdir()) == ["graph.json", "student"]


@pytest.mark.parametrize("path", ["", "  "])
def test_an_empty_path_is_refused(tmp_path, path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FieldkitError, match="empty path"):
        open_run_folder(path, None)
    assert list(tmp_path.iterdir()) == []


def test_a_file_or_a_path_through_a_file_is_refused(tmp_path):
    file = tmp_path / "results.txt"
    file.write_text("precious")
    with pytest.raises(FieldkitError, match="is a file, not a folder"):
        open_run_folder(file, None)
    with pytest.raises(FieldkitError, match=r"results\.txt is a file"):
        open_run_folder(file / "run", None)
    assert file.read_text() == "precious"


def test_a_new_folder_is_marked_and_locked_with_the_owners_pid(tmp_path):
    folder = open_run_folder(tmp_path / "a" / "b", None)
    assert (folder.path / MARKER).is_file()
    assert (folder.path / LOCK).read_text() == f"{os.getpid()}\n"
    folder.release()
    assert (folder.path / LOCK).read_text() == ""  # released: the next run takes it without a note
    again = open_run_folder(tmp_path / "a" / "b", None)
    assert again.notes == []
    again.release()


def test_a_second_process_cannot_open_a_folder_in_use_and_gets_in_after_the_first_ends(tmp_path, holder):
    run = tmp_path / "run"
    proc = holder(run)
    for resume in (None, "latest"):
        with pytest.raises(FieldkitError, match=rf"in use by another fieldkit run \(pid {proc.pid}\)"):
            open_run_folder(run, resume)
    proc.stdin.close()
    assert proc.wait() == 0
    folder = open_run_folder(run, None)
    assert folder.notes == []
    folder.release()


def test_the_lock_of_a_killed_run_is_taken_over_with_a_note(tmp_path, holder):
    run = tmp_path / "run"
    proc = holder(run)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    folder = open_run_folder(run, None)
    assert any(f"took over the lock of pid {proc.pid}" in note for note in folder.notes)
    assert (run / LOCK).read_text() == f"{os.getpid()}\n"
    folder.release()


def test_a_finished_run_is_refused_unless_resumed(tmp_path):
    run = open_run_folder(tmp_path / "run", None)
    (run.path / "checkpoints" / "step-00000004").mkdir(parents=True)
    (run.path / "metrics.jsonl").write_text('{"step": 1}\n')
    run.release()
    before = snapshot(run.path)
    with pytest.raises(FieldkitError, match="already holds a run") as err:
        open_run_folder(run.path, None)
    assert "--resume latest" in err.value.hint
    assert snapshot(run.path) == before
    resumed = open_run_folder(run.path, "latest")
    assert resumed.resume == "latest" and resumed.notes == []
    assert (run.path / "metrics.jsonl").is_file()
    resumed.release()


@pytest.mark.parametrize("resume", [None, "latest"])
def test_a_run_that_died_before_its_first_checkpoint_restarts_with_a_note(tmp_path, resume):
    run = open_run_folder(tmp_path / "run", None)
    (run.path / "metrics.jsonl").write_text('{"step": 1}\n')
    (run.path / "samples").mkdir()
    (run.path / "checkpoints" / ".step-00000004.123.tmp").mkdir(parents=True)
    (run.path / "user-notes.txt").write_text("not ours")
    run.release()
    again = open_run_folder(run.path, resume)
    assert again.resume is None
    text = " ".join(again.notes)
    assert "temporary" in text and "metrics.jsonl" in text
    assert (resume is None) or "no checkpoint to resume from" in text
    assert sorted(p.name for p in run.path.iterdir()) == [LOCK, MARKER, "user-notes.txt"]
    again.release()


@pytest.mark.parametrize("resume", [None, "latest"])
@pytest.mark.parametrize("output", ["student", "results.json"])
def test_a_finished_run_whose_checkpoints_were_removed_is_refused_not_replaced(tmp_path, resume, output):
    run = open_run_folder(tmp_path / "run", None)
    (run.path / "metrics.jsonl").write_text('{"step": 1}\n')
    if output == "student":
        (run.path / "student").mkdir()
        (run.path / "student" / "model.safetensors").write_bytes(b"weights")
    else:
        (run.path / "results.json").write_text("{}")
    run.release()
    before = snapshot(run.path)
    with pytest.raises(FieldkitError, match="finished run's outputs") as err:
        open_run_folder(run.path, resume)
    assert output in err.value.message and "--out" in err.value.hint
    after = snapshot(run.path)
    after.pop(LOCK, None), before.pop(LOCK, None)  # the lock file is emptied on release
    assert after == before


def test_abandoning_a_folder_it_made_removes_it_and_nothing_else(tmp_path):
    fresh = open_run_folder(tmp_path / "fresh", None)
    fresh.abandon()
    assert not fresh.path.exists()
    (tmp_path / "empty").mkdir()
    kept = open_run_folder(tmp_path / "empty", None)  # the user's folder: it stays, marked, unlocked
    kept.abandon()
    assert sorted(p.name for p in kept.path.iterdir()) == [LOCK, MARKER]
    assert (kept.path / LOCK).read_text() == ""
    written = open_run_folder(tmp_path / "written", None)
    (written.path / "metrics.jsonl").write_text('{"step": 1}\n')
    written.abandon()  # it wrote something: left as a run folder a restart settles
    assert (written.path / "metrics.jsonl").is_file()


def test_temporary_folders_of_an_interrupted_write_are_removed_on_resume(tmp_path):
    run = open_run_folder(tmp_path / "run", None)
    good = run.path / "checkpoints" / "step-00000002"
    good.mkdir(parents=True)
    (run.path / "checkpoints" / ".step-00000004.99.tmp").mkdir()  # fieldkit.atomic's temporaries
    (run.path / ".student.99.tmp").mkdir()
    run.release()
    again = open_run_folder(run.path, "latest")
    assert again.resume == "latest"
    assert [p.name for p in (run.path / "checkpoints").iterdir()] == ["step-00000002"]
    assert not (run.path / ".student.99.tmp").exists()
    again.release()


def test_write_errors_the_user_can_fix_are_named():
    import errno

    full = write_error(OSError(errno.ENOSPC, "No space left on device", "run/metrics.jsonl"))
    assert full is not None and "disk is full" in full.message and "run/metrics.jsonl" in full.message
    # resuming is done in the same folder: --resume latest in a new --out would start the run afresh
    assert full.hint is not None and "--resume latest (in the same folder" in full.hint
    assert write_error(OSError(errno.EIO, "I/O error")) is None
