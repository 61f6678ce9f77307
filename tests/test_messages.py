"""Messages that used to mislead: each says what happened and what to type next."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_cli_run import DISTILL, invoke


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    path = tmp_path / "graph.yaml"
    path.write_text(DISTILL)
    return path


def test_a_resume_value_that_is_no_checkpoint_is_not_called_a_half_written_one(
    graph, quickstart_runs, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(quickstart_runs[0], run)
    result = invoke("distill", str(graph), "--out", str(run), "--resume", "last", "--no-progress")
    assert result.exit_code == 2
    assert "last: no such checkpoint folder" in result.output and "--resume latest" in result.output
    assert "interrupted while being written" not in result.output


def test_a_folder_that_holds_a_run_suggests_out_not_run_out(graph, quickstart_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(quickstart_runs[0], run)
    result = invoke("distill", str(graph), "--out", str(run), "--no-progress")
    assert result.exit_code == 2 and "already holds a run" in result.output
    assert "another output folder with --out PATH" in result.output and "run.out" not in result.output


def test_debug_works_after_the_subcommand_too(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("fields: {g: {type: guidanse}}\n")
    for args in (["--debug", "validate", str(bad)], ["validate", str(bad), "--debug"]):
        result = invoke(*args)
        assert result.exit_code == 2, args
        assert "Traceback (most recent call last)" in result.output, args


def test_report_on_a_missing_folder_says_it_is_missing(tmp_path):
    result = invoke("report", str(tmp_path / "nope"), "-o", str(tmp_path / "r.html"))
    assert result.exit_code == 2
    assert f"{tmp_path / 'nope'}: no such folder" in result.output and "graph.json" not in result.output


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_a_run_folder_given_as_checkpoint_points_at_its_student(command, graph, quickstart_runs, tmp_path):
    run = quickstart_runs[0]
    result = invoke(
        command,
        str(graph),
        "--checkpoint",
        str(run),
        "-o" if command == "sample" else "--json",
        *([str(tmp_path / "s.png")] if command == "sample" else []),
    )
    assert result.exit_code == 2
    assert "a run folder, not a model folder" in result.output
    assert f"--checkpoint {run / 'student'}" in result.output and "class None" not in result.output


def test_validate_refuses_a_student_init_that_distill_would_refuse(graph):
    result = invoke("validate", str(graph), "--set", "student.init=guided")
    assert result.exit_code == 2
    assert "student.init: 'guided' is an operator (guidance)" in result.output


@pytest.mark.parametrize(
    ("key", "meant"),
    [("lr", "run.lr"), ("steps", "run.steps"), ("learning_rate", "run.lr"), ("shift", "flow.shift")],
)
def test_a_run_setting_at_the_top_level_gets_a_did_you_mean(graph, key, meant):
    result = invoke("validate", str(graph), "--set", f"{key}=1")
    assert result.exit_code == 2
    assert f"unknown key {key!r}; did you mean {meant!r}?" in result.output


def test_graph_json_records_the_out_the_run_wrote_to(graph, tmp_path):
    out = tmp_path / "elsewhere"
    assert invoke("distill", str(graph), "--out", str(out), "--no-progress").exit_code == 0
    assert json.loads((out / "graph.json").read_text())["run"]["out"] == str(out)


def test_a_typed_node_or_section_that_is_no_mapping_says_what_to_write(tmp_path):
    text = DISTILL.replace("student: {init: init}", "student: {init: init}\nrouter: hard\nmethod: danceopd")
    path = tmp_path / "graph.yaml"
    path.write_text(text.replace("flow: {steps: 4}", "flow:"))
    result = invoke("validate", str(path))
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and "TypedSpec" not in out and "Input should be" not in out
    assert "router: expected a mapping with a type, got 'hard'; write {type: hard}" in out
    assert "method: expected a mapping with a type, got 'danceopd'; write {type: danceopd}" in out
    assert "flow: expected a mapping of keys, got None; an empty section needs {} or its keys" in out


def test_a_fixed_length_list_with_too_few_values_says_so(graph):
    result = invoke("validate", str(graph), "--set", "run.optimizer.betas=[0.9]")
    assert result.exit_code == 2
    assert "run.optimizer.betas.1: too few values: item 1 (counting from 0) is missing" in result.output


@pytest.mark.parametrize(
    ("method", "raise_"),
    [
        ("{type: danceopd, k: 5}", "flow.steps"),
        ("{type: danceopd, k: 3, rollout_steps: 2}", "method.rollout_steps"),
    ],
)
def test_more_queries_than_rollout_steps_are_refused(graph, method, raise_):
    result = invoke("validate", str(graph), "--set", f"method={method}")
    assert result.exit_code == 2, result.output
    assert "method.k is" in result.output and f"raise {raise_}" in " ".join(result.output.split())
    every = invoke("validate", str(graph), "--set", "method={type: danceopd, k: 4}")
    assert every.exit_code == 0, every.output
