"""What a run shows: a start line, one plain line per logging interval outside a terminal (never cut), the
tables on stdout (kept under --no-progress, silenced by --quiet), a dry-run estimate from warm updates, and
Ctrl-C that writes a checkpoint and says how to resume."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_cli_run import DISTILL, invoke

from fieldkit import loads_graph
from fieldkit.distill.callbacks import Callback
from fieldkit.distill.console import RunInterrupted, clock, in_graph_order
from fieldkit.distill.engine import Engine
from fieldkit.plugins import get_host, hookimpl

LONG = DISTILL.replace("steps: 4,", "steps: 6,")


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    path = tmp_path / "graph.yaml"
    path.write_text(LONG)
    return path


def test_outside_a_terminal_a_start_line_then_one_whole_line_per_interval_then_the_tables(graph, tmp_path):
    out = tmp_path / "run"
    result = invoke("distill", str(graph), "--out", str(out), "--set", "run.log_every=2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "distill graph: cpu, fp32, 1 process, "
        + re.search(r"\d[\d,]* parameters", lines[0])[0]  # type: ignore[index]
        + f", global batch 4 (4 per micro-batch), 6 steps, writing to {out}"
    )
    progress = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == ["2/6", "4/6", "6/6"]
    for line in progress:  # every field, whole, on one line
        assert re.fullmatch(r"step \d/6  loss \S+  lr 0\.001  \d+\.\d\d steps/s  ETA \S+", line), line
    assert "fields on their routes" in result.stdout and "0.95x" in result.stdout  # the results, on stdout
    assert "graph: 6 steps, 0 skipped (non-finite loss or gradient)" in result.stdout


def test_no_progress_keeps_the_start_line_and_the_tables_and_quiet_prints_nothing(graph, tmp_path):
    result = invoke("distill", str(graph), "--out", str(tmp_path / "a"), "--no-progress")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("distill graph: cpu") and "fields on their routes" in result.stdout
    assert not [line for line in result.stdout.splitlines() if line.startswith("step ")]
    quiet = invoke("distill", str(graph), "--out", str(tmp_path / "b"), "--quiet")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout == "" and quiet.stderr == ""
    assert (tmp_path / "b" / "metrics.jsonl").is_file() and (tmp_path / "b" / "results.json").is_file()


def test_the_dry_run_estimates_from_warm_updates(graph):
    result = invoke("distill", str(graph), "--dry-run")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stderr.split())
    assert re.search(r"first update \d+\.\d+ s, then \d+\.\d+ s per update \(median of 3;", text), text
    assert "Nothing written." in text


class CtrlC(Callback):
    """Presses Ctrl-C (a real SIGINT to this process) after update ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_update_end(self, run, report) -> None:
        if report.step == self.at:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def sigint_handler():
    """Ctrl-C as a terminal delivers it (Python's default handler) for the test, whatever this process
    started with (a test run started in the background, ``CMD &``, starts with SIGINT ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_writes_a_checkpoint_and_says_how_to_resume(graph, tmp_path, sigint_handler):
    out = tmp_path / "run"
    engine = Engine(loads_graph(LONG.replace("checkpoint_every: 2", "checkpoint_every: 100")), out)
    with pytest.raises(RunInterrupted) as stopped:
        engine.run([CtrlC(at=2)])
    message = str(stopped.value)
    # the update under way (3) finished and was saved; the resume command is printed whole
    assert f"interrupted at step 3; checkpoint {out / 'checkpoints' / 'step-00000003'}" in message
    assert f"resume with: fieldkit distill GRAPH --out {out} --resume latest" in message
    assert (out / "checkpoints" / "step-00000003" / "manifest.json").is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    resumed = Engine(loads_graph(LONG), out, resume="latest", show_progress=False).run()
    assert resumed.step == 6


def test_a_run_started_with_ctrl_c_ignored_keeps_ignoring_it(tmp_path, sigint_handler):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `nohup fieldkit distill ... &` from a script starts
    result = Engine(loads_graph(LONG), tmp_path / "run", show_progress=False).run([CtrlC(at=2)])
    assert result.step == 6  # the SIGINT after update 2 stopped nothing
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_the_command_line_turns_an_interrupt_into_its_message_and_exit_130():
    class Interrupts:
        @hookimpl
        def fieldkit_register_commands(self, cli):
            @cli.command(name="zz-stop")
            def stop() -> None:
                raise RunInterrupted(
                    "interrupted at step 3; resume with: fieldkit distill g.yaml --resume latest"
                )

    host = get_host()
    host.register(Interrupts(), "interrupts")
    try:
        result = invoke("zz-stop")
    finally:
        host.unregister("interrupts")
    assert result.exit_code == 130
    assert "resume with: fieldkit distill g.yaml --resume latest" in result.stderr
    assert "Aborted!" not in result.output


def test_clock():
    assert [clock(s) for s in (0, 59.6, 61, 3600, 3725)] == ["0:00", "1:00", "1:01", "1:00:00", "1:02:05"]


@given(st.permutations(["t2i", "local", "global", "zeta"]))
def test_route_values_are_listed_in_the_graphs_route_order_whatever_order_they_arrive_in(arrival):
    values = {name: float(i) for i, name in enumerate(arrival)}
    listed = in_graph_order(["t2i", "local", "global"], values)
    assert [name for name, _ in listed] == ["t2i", "local", "global", "zeta"]  # unknown names last
    assert dict(listed) == values
