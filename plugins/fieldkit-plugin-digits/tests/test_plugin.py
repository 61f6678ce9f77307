"""The plugin registers through its entry point; the digits graphs validate; a tiny distillation runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fieldkit import load_graph
from fieldkit.cli import cli
from fieldkit.graph import BuildContext
from fieldkit.plugins import get_host

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "digits"


def test_registers_through_the_entry_point():
    host = get_host()
    assert not host.failures
    names = {(r.kind, r.name): r.plugin for r in host.registry}
    for kind, name in [
        ("dataset", "digits.t2i"),
        ("dataset", "digits.local_edit"),
        ("dataset", "digits.global_edit"),
        ("metric", "digits.t2i"),
        ("metric", "digits.edit"),
        ("operator", "digits.describe_target"),
    ]:
        assert names[(kind, name)] == "digits"
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listed = {p["name"]: p for p in json.loads(result.output)["plugins"]}
    assert "digits-judge" in listed["digits"]["types"]["command"]


@pytest.mark.parametrize("graph", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_graphs_validate(graph):
    result = CliRunner().invoke(cli, ["validate", str(EXAMPLES / graph)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("recipe", sorted(p.name for p in (EXAMPLES / "teachers").glob("*.yaml")))
def test_teacher_recipes_validate(recipe):
    result = CliRunner().invoke(cli, ["validate", str(EXAMPLES / "teachers" / recipe)])
    assert result.exit_code == 0, result.output


def test_operator_teacher_keeps_the_other_side():
    """masked(describe_target(guided T2I), toward_source) ends exactly on the source outside the mask."""
    from fieldkit.flow import generate, sigma_schedule

    graph = load_graph(EXAMPLES / "operator_local.yaml")
    ctx = BuildContext(graph)
    field = ctx.field("local_operator")
    bucket = ctx.build(("routes", "local", "data"), graph.datasets["local"])
    batch = bucket.sample(4, torch.Generator().manual_seed(0))
    out = generate(field, batch.cond, (1, 8, 16), sigma_schedule(8, 3.0), torch.Generator().manual_seed(0))
    keep = 1 - batch.cond["mask"]
    assert torch.allclose(out * keep, batch.cond["source"] * keep, atol=1e-5)


def test_tiny_distillation_on_the_digits_graph(tmp_path):
    out = tmp_path / "run"
    args = ["distill", str(EXAMPLES / "graph.yaml"), "--out", str(out), "--no-progress"]
    args += ["--set", "run.steps=2", "--set", "run.batch_size=4", "--set", "run.eval_samples=8"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (out / "student" / "model.safetensors").is_file()
    grids = sorted(p.name for p in (out / "samples").glob("*.png"))
    assert [g.rsplit("-", 1)[-1] for g in grids] == ["global.png", "local.png", "t2i.png"]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["route"] for r in rows} == {"t2i", "local", "global"}
    assert {r["field"] for r in rows} == {"t2i", "local", "global", "student"}
