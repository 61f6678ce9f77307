"""The adversarial suite: hostile inputs a user (or an attacker sharing a folder) can give, as one table of
cases, each with the exit code and a fragment of the message it must get, and what must stay untouched.

The next round of adversarial testing starts from this table: add a row per new case. Cases run in-process
through click's CliRunner; the few that could hang on wrong code (a FIFO opened for reading) run the real
command in a subprocess whose timeout only keeps CI from hanging, not a speed assertion.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from pydantic import BaseModel
from test_cli_run import DISTILL

from fieldkit import loads_graph
from fieldkit.cli import cli
from fieldkit.errors import FieldkitError, GraphError
from fieldkit.plugins import get_host, hookimpl

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
    env: tuple[tuple[str, str], ...] = ()  # environment variables the command runs with


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
        "resume with another optimizer",
        lambda w: [*_resume(w), "--set", "run.optimizer.type=sgd", "--set", "run.steps=5"],
        2,
        "trained with run.optimizer.type adamw, and this session asks for sgd",
    ),
    Case(
        "a run's lock file a FIFO",
        lambda w: _in_run(w, ".fieldkit.lock", os.mkfifo),
        2,
        "FIFO",
        subprocess=True,
    ),
]


def _damaged(w: World, name: str, content: str | bytes | None, command: str = "report") -> list[str]:
    """``report`` (or ``export``) of a copy of the run with ``content`` in file ``name`` (None: a FIFO)."""
    path = w.run / name
    path.unlink()
    if content is None:
        os.mkfifo(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return [command, str(w.run), "-o", str(w.tmp / "out")]


def _newest_grid(w: World) -> str:
    return str(max((w.run / "samples").glob("step-*.png")).relative_to(w.run))


def _huge_png() -> bytes:
    """A small file that decodes to 144 million pixels (past PIL's decompression-bomb bound)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- 27.9, 27.13: report and export on damaged run folders ---------------------------------------------------
CASES += [
    Case(f"{command} with {what}", lambda w, a=args, c=command: _damaged(w, *a, c), 2, fragment)
    for command in ("report", "export")
    for what, args, fragment in [
        ("graph.json a list", ("graph.json", "[]"), "not what a run writes"),
        ("a metrics line a list", ("metrics.jsonl", '{"step": 1}\n[1, 2]\n'), "metrics.jsonl:2"),
        ("a metrics step text", ("metrics.jsonl", '{"step": "x"}\n'), "not a metrics record"),
        ("results.json [{}]", ("results.json", "[{}]"), "row 1 names no field"),
        ("results.json rows not a list", ("results.json", '{"rows": 3}'), "rows are not a list"),
    ]
]
CASES += [
    Case(
        f"{command} with a grid {what}",
        lambda w, d=data, c=command: _damaged(w, _newest_grid(w), d, c),
        2,
        fragment,
        subprocess=data is None,
    )
    for command in ("report", "export")
    for what, data, fragment in [
        ("corrupt", b"\x89PNG\r\n\x1a\nnot really", "not a readable PNG"),
        ("a FIFO", None, "is a FIFO"),
    ]
]
CASES.append(
    Case(
        "report with a decompression-bomb grid",
        lambda w: _damaged(w, _newest_grid(w), _huge_png()),
        2,
        "not a readable PNG",
    )
)


def _graph_file(w: World, text: str, *args: str) -> list[str]:
    path = w.tmp / "other.yaml"
    path.write_text(text)
    return ["validate", str(path), *args]


METRIC = "metrics: [{type: gaussian_mixture, classes: 3, shape: [1, 4, 4]"
MERGED = DISTILL.replace("  mixture: ", "  mixture: &world ").replace(
    "  guided:", "  other: {<<: *world, seed: 3}\n  guided:"
)

# -- 27.12, 27.15: late failures caught at validate or at start -------------------------------------------
CASES += [
    Case("a YAML merge key (<<: *anchor)", lambda w: _graph_file(w, MERGED), 0, "valid"),
    Case(
        "a merge key on a list of numbers",
        lambda w: _graph_file(w, "fields:\n  m: {<<: [1]}\n"),
        2,
        "other.yaml:2: a merge key '<<' takes a mapping",
    ),
    Case(
        "LoRA targets that match no module",
        lambda w: [*_validate(w, "student.train=lora", "student.lora.targets=[nothing]"), "--build"],
        2,
        "not found in the base model",
    ),
    *(
        Case(
            f"{' '.join(['validate', *cmd])}: a metric {what} than its route's data",
            lambda w, m=metric, c=cmd: _graph_file(
                w, DISTILL.replace(METRIC, f"metrics: [{{type: gaussian_mixture, {m}"), *c
            ),
            2,
            fragment,
        )
        for what, metric, fragment in [
            (
                "of another shape",
                "classes: 3, shape: [1, 4, 1]",
                ":6: routes.t2i.metrics.0: scores samples of shape",
            ),
            ("of fewer classes", "classes: 2, shape: [1, 4, 4]", ":6: routes.t2i.metrics.0: takes 2 classes"),
        ]
        for cmd in ([], ["--build"])
    ),
    Case(
        "run.device mps on a machine without MPS",
        lambda w: ["distill", str(w.graph), "--out", str(w.tmp / "r"), "--set", "run.device=mps"],
        2,
        "no MPS device",
    ),
]

# A student of about 200 GiB: more than any machine these tests run on has free.
_HUGE = "fields.init.config={hidden: 16384, heads: 16, depth: 4, sample_size: [4, 4], num_classes: 3}"


def _student_config(w: World, edit: str) -> list[str]:
    """``eval --checkpoint`` of a copy of the run's student whose config.json has ``edit`` in it."""
    student = w.tmp / "student"
    shutil.copytree(w.run / "student", student)
    config = (student / "config.json").read_text()
    head, _, _ = config.rstrip().rpartition("}")  # the edit last, so that it wins over the same key
    (student / "config.json").write_text(f"{head}, {edit}}}")
    return ["eval", str(w.graph), "--checkpoint", str(student), "--samples", "2"]


def _validate(w: World, *overrides: str) -> list[str]:
    return ["validate", str(w.graph), *(arg for o in overrides for arg in ("--set", o))]


# -- 27.3, 27.10, 27.12: every size has a cap named in its error; what a config allocates is counted first --
CASES += [
    Case(f"validate --set {override}", lambda w, o=override: _validate(w, o), 2, fragment)
    for override, fragment in [
        ("fields.init.config.hidden=1.0e+30", "exceeded maximum size"),
        ("fields.init.config.depth=100000", "less than or equal to 256"),
        ("fields.init.config.sample_size=[8192, 8192]", "less than or equal to 4096"),
        ("fields.init.config.mlp_ratio=.inf", "finite number"),
        ("method={type: danceopd, k: 1000000}", "less than or equal to 1000"),
        ("method={type: flowopd, rollout_steps: 1000000}", "less than or equal to 1000"),
        ("student.lora.rank=1000000", "less than or equal to 4096"),
        ("run.seed=18446744073709551616", "less than 9223372036854775808"),
        ("flow.shift=1.0e+300", "less than or equal to 1000"),
        ("routes.t2i.weight=1.0e+308", "less than or equal to 1000000"),
        ("run.out='runs/{graph:>300}'", "more than the 255"),
        ("run.out='~/runs'", "does not expand"),
    ]
]
CASES += [
    Case(
        "batch_size x grad_accum",
        lambda w: _validate(w, "run.batch_size=65536", "run.grad_accum=65536"),
        2,
        "more than the 1,048,576 allowed",
    ),
    Case(
        "a route name of 250 letters",
        lambda w: _validate(w, "routes={" + "r" * 250 + ": {data: {type: gaussian_mixture}}}"),
        2,
        "at most 64 characters",
    ),
    Case(
        "a route name ending in a newline",
        lambda w: _validate(w, 'routes={"r\\n": {data: {type: x}}}'),
        2,
        "not a valid name",
    ),
    *(
        Case(
            f"eval --checkpoint: config.json {edit[:30]}",
            lambda w, e=edit: _student_config(w, e),
            2,
            fragment,
        )
        for edit, fragment in [
            ('"sample_size": [8192, 8192]', "less than or equal to 4096"),
            ('"hidden": 1e30', "not a valid MMDiTConfig"),
            ('"depth": ' + "[" * 100_000 + "]" * 100_000, "nested"),
        ]
    ),
    Case(
        "validate --build: a student larger than memory",
        lambda w: [*_validate(w, _HUGE), "--build"],
        2,
        "needs at least",
    ),
    Case(
        "distill: a student larger than memory",
        lambda w: ["distill", str(w.graph), "--set", _HUGE],
        2,
        "nothing was allocated",
    ),
]


def _free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _fresh(w: World) -> list[str]:
    return ["distill", str(w.graph), "--out", str(w.tmp / "fresh"), "--no-progress"]


# -- 27.9: WORLD_SIZE > 1 with no peer never hangs ----------------------------------------------------------
CASES += [
    Case(
        "WORLD_SIZE=2 with no MASTER_ADDR or MASTER_PORT",
        _fresh,
        2,
        "WORLD_SIZE is 2 in the environment but MASTER_ADDR and MASTER_PORT are not set",
        env=(("WORLD_SIZE", "2"), ("RANK", "0")),
    ),
    Case(
        "WORLD_SIZE not a number",
        lambda w: [*_validate(w), "--build"],
        2,
        "WORLD_SIZE is 'two' in the environment",
        env=(("WORLD_SIZE", "two"),),
    ),
    Case(
        "WORLD_SIZE=2 at a rendezvous no peer comes to",
        _fresh,
        2,
        "not all 2 processes joined; nothing was written hint: launch several processes with accelerate",
        subprocess=True,
        env=(
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", _free_port()),
            ("FIELDKIT_RENDEZVOUS_TIMEOUT", "2"),
        ),
    ),
]

# -- 27.15: what accelerate's launcher asks for is done, refused, or said ----------------------------------
CASES += [
    Case(
        "ACCELERATE_DYNAMO_BACKEND=inductor while run.compile is off",
        _fresh,
        2,
        "launched with dynamo backend 'inductor' (ACCELERATE_DYNAMO_BACKEND)",
        env=(("ACCELERATE_DYNAMO_BACKEND", "inductor"),),
    ),
    Case(
        "accelerate launch --cpu --num_processes 2 (one process starts)",
        lambda w: [*_fresh(w), "--set", "run.steps=1"],
        0,
        "accelerate started one process, and this run trains alone",
        env=(("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500"), ("ACCELERATE_USE_CPU", "True")),
    ),
]


# -- 27.12: a tracker that needs a login it lacks is refused at start (no network: wandb's files in tmp) -----
_WANDB_HOME = "/nonexistent-fieldkit-wandb-home"
CASES += [
    Case(
        f"{' '.join(cmd)}: report_to wandb without a login",
        lambda w, c=cmd: [*c[:1], str(w.graph), *c[1:], "--set", "run.report_to=[wandb]"],
        2,
        "run `wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline",
        subprocess=True,  # wandb keeps its settings per process
        env=(
            ("WANDB_MODE", ""),
            ("WANDB_API_KEY", ""),
            ("WANDB_CONFIG_DIR", _WANDB_HOME),
            ("NETRC", _WANDB_HOME + "/netrc"),
            ("HOME", _WANDB_HOME),
            ("WANDB_BASE_URL", "http://127.0.0.1:9"),  # were anything sent, it would go nowhere
        ),
    )
    for cmd in (["distill", "--dry-run"], ["validate", "--build"])
]


@pytest.fixture
def world(tmp_path: Path, quickstart_runs: tuple[Path, Path]) -> World:
    graph = tmp_path / "graph.yaml"
    graph.write_text(DISTILL)
    return World(tmp_path, graph, quickstart_runs[0], {})


def _run(argv: list[str], in_subprocess: bool, extra: Mapping[str, str] | None = None) -> tuple[int, str]:
    if in_subprocess:
        env = {**os.environ, "FIELDKIT_LOAD_PLUGINS": "", **(extra or {})}
        done = subprocess.run(
            [str(FIELDKIT), *argv], capture_output=True, text=True, timeout=300, env=env, check=False
        )
        return done.returncode, done.stdout + done.stderr
    result = CliRunner().invoke(cli, argv, prog_name="fieldkit", env=dict(extra or {}))
    return result.exit_code, result.output


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_hostile_input_gets_its_exit_code_and_message_and_touches_nothing(case: Case, world: World) -> None:
    argv = case.argv(world)
    code, output = _run(argv, case.subprocess, dict(case.env))
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


class PlainParams(BaseModel):
    """A plugin's parameters written as a plain pydantic model (not fieldkit's Params)."""

    scale: float = 1.0
    sizes: list[float] = []


def test_a_plugin_whose_params_are_plain_pydantic_gets_no_inf_or_nan_either() -> None:
    class PlainPlugin:
        @hookimpl
        def fieldkit_register_sources(self, register):  # type: ignore[no-untyped-def]
            register("plain.zero", lambda p, ctx: None, PlainParams)

    host = get_host()
    host.register(PlainPlugin(), "plain")
    try:
        assert loads_graph("fields:\n  z: {type: plain.zero, scale: 2.0}\n").nodes["z"].params.scale == 2.0
        for bad in ("scale: .inf", "scale: .nan", "sizes: [1.0, -.inf]"):
            with pytest.raises(GraphError, match="must be a finite number") as err:
                loads_graph(f"fields:\n  z: {{type: plain.zero, {bad}}}\n")
            assert ":2" in err.value.message  # the file's line
    finally:
        host.unregister("plain")


class NanMetric:
    """A plugin metric that scores every sample NaN (a metric of a diverged model, or a buggy one)."""

    def __call__(self, samples: object, batch: object) -> dict[str, float]:
        return {"nan_score": float("nan")}


def test_a_nan_metric_is_written_to_results_json_as_null_not_nan(world: World) -> None:
    class NanPlugin:
        @hookimpl
        def fieldkit_register_metrics(self, register):  # type: ignore[no-untyped-def]
            register("nan.metric", lambda p, ctx: NanMetric(), PlainParams)

    host = get_host()
    host.register(NanPlugin(), "nan")
    try:
        world.graph.write_text(DISTILL.replace("metrics: [", "metrics: [{type: nan.metric}, "))
        out = world.tmp / "nan-run"
        code, output = _run(["distill", str(world.graph), "--out", str(out), "--set", "run.steps=1"], False)
        assert code == 0, output
        results = json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(c))
        assert results["rows"] and all(row["nan_score"] is None for row in results["rows"])
    finally:
        host.unregister("nan")


def test_a_nan_sample_is_never_counted_as_following_the_prompt() -> None:
    from fieldkit.analytic import GaussianMixtureData, GaussianMixtureField, MixtureAccuracy

    data = GaussianMixtureData(GaussianMixtureField.random(2, (1, 2, 2), std=0.1, seed=0))
    batch = data.sample(64, torch.Generator().manual_seed(0))
    metric = MixtureAccuracy(data.field)
    assert metric(batch.target, batch)["accuracy"] > 0.9  # exact samples of the mixture
    assert metric(torch.full_like(batch.target, float("nan")), batch)["accuracy"] == 0.0


def test_settings_changed_on_resume_are_applied_with_a_note_and_each_session_keeps_its_graph(
    world: World,
) -> None:
    run = world.run
    before = (run / "sessions.jsonl").read_text().splitlines()
    changed = [
        "--set",
        "run.steps=5",
        "--set",
        "run.batch_size=8",
        "--set",
        "run.seed=3",
        "--set",
        "run.sample_every=2",
    ]
    code, output = _run([*_resume(world), *changed], False)
    assert code == 0, output
    text = " ".join(output.split())
    for note in ("run.batch_size: 4 -> 8", "run.seed: 0 -> 3", "run.steps: 4 -> 5"):
        assert f"changed since the last session: {note}" in text
    sessions = [json.loads(line) for line in (run / "sessions.jsonl").read_text().splitlines()]
    assert len(sessions) == len(before) + 1
    assert sessions[-1]["changed"] == ["run.batch_size: 4 -> 8", "run.seed: 0 -> 3", "run.steps: 4 -> 5"]
    assert sessions[0]["spec"]["run"]["batch_size"] == 4 and sessions[-1]["spec"]["run"]["batch_size"] == 8
    assert json.loads((run / "graph.json").read_text())["run"]["batch_size"] == 8


def test_a_fifo_where_a_feature_cache_belongs_is_never_opened(tmp_path: Path) -> None:
    from fieldkit.tables import cached_fingerprint

    os.mkfifo(tmp_path / "cache.safetensors")
    assert cached_fingerprint(tmp_path / "cache.safetensors", "fmt") is None


def test_a_grid_left_half_written_by_a_kill_is_removed_when_the_run_resumes(world: World) -> None:
    leftover = world.run / "samples" / ".step-00000004-t2i.png.4242.tmp"
    leftover.write_bytes(b"half a png")
    code, output = _run(_resume(world), False)
    assert code == 0, output
    assert not leftover.exists() and "unfinished temporary" in " ".join(output.split())


def test_a_metric_that_fails_in_the_final_evaluation_is_named_and_not_unexpected() -> None:
    from fieldkit.analytic import GaussianMixtureData, GaussianMixtureField
    from fieldkit.errors import PluginError
    from fieldkit.eval.report import evaluate
    from fieldkit.protocols import Route

    def broken(samples: torch.Tensor, batch: object) -> dict[str, float]:
        raise IndexError("index 7 is out of bounds")

    field = GaussianMixtureField.random(2, (1, 2, 2), std=0.1, seed=0)
    route = Route("t2i", field, GaussianMixtureData(field), metrics=(broken,))
    with pytest.raises(PluginError, match=r"routes\.t2i\.metrics\.0: failed on 4 samples") as err:
        evaluate({"teacher": field}, [route], torch.linspace(1, 0, 3), samples=4)
    assert "--resume latest" in (err.value.hint or "")


def test_wandb_offline_or_logged_in_passes_the_login_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fieldkit.distill.trackers import check_logins

    pytest.importorskip("wandb")
    for var in (
        "WANDB_MODE",
        "WANDB_API_KEY",
        "WANDB_IDENTITY_TOKEN_FILE",
        "WANDB_DISABLED",
        "WANDB_BASE_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    with pytest.raises(FieldkitError, match=r"wandb has no API key for https://api\.wandb\.ai"):
        check_logins(["wandb"])
    check_logins(["tensorboard"])
    (tmp_path / "settings").write_text("[default]\nmode = offline\n")  # `wandb offline`
    check_logins(["wandb"])
    (tmp_path / "settings").unlink()
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_logins(["wandb"])
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / "netrc").chmod(0o600)
    check_logins(["wandb"])  # `wandb login` wrote its key


def test_a_dry_run_builds_a_missing_feature_cache_in_a_temporary_folder_and_writes_none(
    tmp_path: Path,
) -> None:
    from fieldkit.backbones.prompts import cached, caches_in_scratch

    beside_data = tmp_path / "prompts.csv.features.safetensors"
    encode = lambda: {"text": torch.ones(2, 3)}  # noqa: E731
    with caches_in_scratch() as scratch:
        used = cached(beside_data, "fmt", "key", ["a", "b"], encode)
        assert used.parent == scratch and used.is_file()
        assert cached(used, "fmt", "key", ["a", "b"], encode) == used  # fresh: read where it is
    assert not beside_data.exists() and not used.exists() and not scratch.exists()
    assert cached(beside_data, "fmt", "key", ["a", "b"], encode) == beside_data  # a real run writes it
    assert beside_data.is_file()
