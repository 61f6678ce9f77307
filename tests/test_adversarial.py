"""The adversarial suite: hostile inputs a user (or an attacker sharing a folder) can give, as one table of
cases, each with the exit code and a fragment of the message it must get, and what must stay untouched.

The next round of adversarial testing starts from this table: add a row per new case. Cases run in-process
through click's CliRunner; the few that could hang on wrong code (a FIFO opened for reading) run the real
command in a subprocess whose timeout only keeps CI from hanging, not a speed assertion.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_cli_run import DISTILL

from fieldkit.cli import cli

FIELDKIT = Path(sys.executable).parent / "fieldkit"
MINE = b"the user's own file\n"


@dataclass
class World:
    """A temporary folder with a graph, a copy of a finished run, and the things a case must not touch."""

    tmp: Path
    graph: Path
    finished: Path
    untouched: dict[Path, bytes | int]  # a file's bytes, or a node's st_rdev / FIFO's mode

    @property
    def run(self) -> Path:
        """A writable copy of the finished quickstart run (made on first use)."""
        run = self.tmp / "run"
        if not run.exists():
            shutil.copytree(self.finished, run)
        return run

    def mine(self, name: str = "mine.txt") -> Path:
        """A user's file that no case may change."""
        path = self.tmp / name
        path.write_bytes(MINE)
        self.untouched[path] = MINE
        return path

    def link(self, name: str, target: Path | None = None) -> Path:
        """A symbolic link at ``name`` to a user's file (``target``, or a new one)."""
        path = self.tmp / name
        path.symlink_to(target or self.mine(f"target-of-{Path(name).name}"))
        self.untouched[path] = -1  # stays a link
        return path

    def fifo(self, name: str) -> Path:
        path = self.tmp / name
        os.mkfifo(path)
        self.untouched[path] = stat.S_IFIFO
        return path

    def device(self, name: str) -> Path:
        """A character device like /dev/null (major 1, minor 3), made in the temporary folder (needs root)."""
        path = self.tmp / name
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs root (CAP_MKNOD)")
        self.untouched[path] = os.makedev(1, 3)
        return path

    def check_untouched(self) -> None:
        for path, expected in self.untouched.items():
            info = os.lstat(path)
            if expected == -1:
                assert stat.S_ISLNK(info.st_mode), f"{path} is no longer a link"
            elif expected == stat.S_IFIFO:
                assert stat.S_ISFIFO(info.st_mode), f"{path} is no longer a FIFO"
            elif isinstance(expected, int):
                assert stat.S_ISCHR(info.st_mode) and info.st_rdev == expected, f"{path} was replaced"
            else:
                assert stat.S_ISREG(info.st_mode) and path.read_bytes() == expected, f"{path} changed"


@dataclass(frozen=True)
class Case:
    """``argv(world)`` gives the command line; the run must exit ``code`` with ``fragment`` in its output."""

    id: str
    argv: Callable[[World], list[str]]
    code: int
    fragment: str
    subprocess: bool = False  # could hang on wrong code


def _sample(w: World, out: Path) -> list[str]:
    return ["sample", str(w.graph), "--field", "mixture", "-n", "2", "-o", str(out)]


def _resume(w: World) -> list[str]:
    return ["distill", str(w.graph), "--out", str(w.run), "--resume", "latest", "--no-progress"]


def _in_run(w: World, name: str, make: Callable[[Path], object]) -> list[str]:
    entry = w.run / name
    entry.unlink(missing_ok=True)
    make(entry)
    return _resume(w)


def _linked_into_run(w: World, name: str) -> list[str]:
    target = w.mine(f"target-of-{name}")
    return _in_run(w, name, lambda entry: entry.symlink_to(target))


def _merge(w: World, out: Path) -> list[str]:
    return ["merge", str(w.run / "student"), str(w.run / "student"), "-o", str(out)]


CASES = [
    # -- 27.1: outputs are written, never replaced through a link or into a device --------------------------
    Case("sample -o a symlink", lambda w: _sample(w, w.link("grid.png")), 2, "is a symbolic link"),
    Case(
        "sample -o a dangling symlink", lambda w: _sample(w, w.link("g.png", w.tmp / "none")), 2, "symbolic"
    ),
    Case("sample -o a FIFO", lambda w: _sample(w, w.fifo("grid.png")), 2, "is a FIFO"),
    Case("sample -o a device node", lambda w: _sample(w, w.device("full")), 2, "is a device"),
    Case("sample -o .", lambda w: _sample(w, Path(".")), 2, "is a folder"),
    Case(
        "sample -o: its labels .json a symlink",
        lambda w: (w.link("g.json"), _sample(w, w.tmp / "g.png"))[1],
        2,
        "is a symbolic link",
    ),
    Case("report -o a symlink", lambda w: ["report", str(w.run), "-o", str(w.link("r.html"))], 2, "symbolic"),
    Case(
        "report -o a device node", lambda w: ["report", str(w.run), "-o", str(w.device("r"))], 2, "a device"
    ),
    Case("schema -o a symlink", lambda w: ["schema", "-o", str(w.link("s.json"))], 2, "is a symbolic link"),
    Case("schema -o a FIFO", lambda w: ["schema", "-o", str(w.fifo("s.json"))], 2, "is a FIFO"),
    Case("schema -o a device node", lambda w: ["schema", "-o", str(w.device("s"))], 2, "is a device"),
    Case(
        "export -o a symlink",
        lambda w: ["export", str(w.run), "-o", str(w.link("e", w.tmp / "nowhere"))],
        2,
        "is a symbolic link",
    ),
    Case("merge -o a symlink to a folder", lambda w: _merge(w, w.link("m", w.tmp)), 2, "is a symbolic link"),
    Case("merge -o an existing file", lambda w: _merge(w, w.mine()), 2, "is a regular file, not a folder"),
    Case("merge -o through a file", lambda w: _merge(w, w.mine() / "x"), 2, "not a folder"),
    Case(
        "export -o through a file", lambda w: ["export", str(w.run), "-o", str(w.mine() / "x")], 2, "a file"
    ),
    Case("export -o in /proc", lambda w: ["export", str(w.run), "-o", "/proc/self/fieldkit-x"], 2, "cannot"),
    Case("schema -o a 300-letter name", lambda w: ["schema", "-o", str(w.tmp / ("n" * 300))], 2, "bytes"),
    # -- 27.2: run-folder files are opened without following links --------------------------------------
    Case(
        "distill --out a symlink",
        lambda w: [*_resume(w)[:3], str(w.link("r", w.run)), "--no-progress"],
        2,
        "is a symbolic link",
    ),
    Case("a run's lock file a symlink", lambda w: _linked_into_run(w, ".fieldkit.lock"), 2, "symbolic link"),
    Case("a run's sessions.jsonl a symlink", lambda w: _linked_into_run(w, "sessions.jsonl"), 2, "symbolic"),
    Case("a run's metrics.jsonl a symlink", lambda w: _linked_into_run(w, "metrics.jsonl"), 2, "symbolic"),
    Case("a run's graph.json a symlink", lambda w: _linked_into_run(w, "graph.json"), 2, "symbolic link"),
    Case(
        "a run's metrics.jsonl a FIFO",
        lambda w: _in_run(w, "metrics.jsonl", os.mkfifo),
        2,
        "FIFO",
        subprocess=True,
    ),
    Case(
        "a run's lock file a FIFO",
        lambda w: _in_run(w, ".fieldkit.lock", os.mkfifo),
        2,
        "FIFO",
        subprocess=True,
    ),
]


@pytest.fixture
def world(tmp_path: Path, quickstart_runs: tuple[Path, Path]) -> World:
    graph = tmp_path / "graph.yaml"
    graph.write_text(DISTILL)
    return World(tmp_path, graph, quickstart_runs[0], {})


def _run(argv: list[str], in_subprocess: bool) -> tuple[int, str]:
    if in_subprocess:
        env = {**os.environ, "FIELDKIT_LOAD_PLUGINS": ""}
        done = subprocess.run(
            [str(FIELDKIT), *argv], capture_output=True, text=True, timeout=300, env=env, check=False
        )
        return done.returncode, done.stdout + done.stderr
    result = CliRunner().invoke(cli, argv, prog_name="fieldkit")
    return result.exit_code, result.output


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_hostile_input_gets_its_exit_code_and_message_and_touches_nothing(case: Case, world: World) -> None:
    argv = case.argv(world)
    code, output = _run(argv, case.subprocess)
    text = " ".join(output.split())
    assert code == case.code, output
    assert case.fragment in text, output
    assert "unexpected" not in text and "Traceback" not in text
    world.check_untouched()


def test_an_export_copies_the_student_so_writing_into_it_leaves_the_run_alone(world: World) -> None:
    out = world.tmp / "export"
    code, output = _run(["export", str(world.run), "-o", str(out)], False)
    assert code == 0, output
    student = world.run / "student" / "model.safetensors"
    before = student.read_bytes()
    assert os.stat(out / "model.safetensors").st_nlink == 1 and os.stat(student).st_nlink == 1
    with (out / "model.safetensors").open("r+b") as fh:  # a user editing the export in place
        fh.write(b"\0" * 64)
    assert student.read_bytes() == before
