"""``run.parallel: fsdp`` in one process (the default suite): the settings are validated with file and line,
one process trains as without FSDP, the shard units and teacher sources are found generically, a plain copy
is rebuilt from a state dict, and launches or checkpoints that do not fit are refused with the fix.
The sharded runs themselves (two processes) are in tests/test_distill_fsdp.py (slow suite)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from fieldkit import loads_graph
from fieldkit.cli import cli
from fieldkit.cond import Cond
from fieldkit.distill.checkpoint import list_checkpoints, load_checkpoint, load_weights, save_checkpoint
from fieldkit.distill.engine import Engine
from fieldkit.distill.sharding import PlainCopy, shard_unit_classes, teacher_sources
from fieldkit.errors import CheckpointError
from fieldkit.flow import rollout_states
from fieldkit.models import MMDiT, MMDiTConfig

MODEL = "{in_channels: 1, sample_size: [4, 4], patch_size: 2, hidden: 16, depth: 2, heads: 2, num_classes: 3}"
WORLD = "{type: gaussian_mixture, classes: 3, shape: [1, 4, 4], std: 0.2}"
GRAPH = f"""\
fields:
  teacher: {{type: fieldkit.mmdit, seed: 3, config: {MODEL}}}
  guided: {{type: guidance, field: teacher, w: 2.0}}
  init: {{type: fieldkit.mmdit, config: {MODEL}}}
routes:
  t2i: {{field: guided, data: {WORLD}}}
student: {{init: init}}
flow: {{steps: 3}}
run:
  steps: 2
  batch_size: 2
  checkpoint_every: 1
  device: cpu
"""


def validate(tmp_path: Path, text: str):
    path = tmp_path / "graph.yaml"
    path.write_text(text)
    return path, CliRunner().invoke(cli, ["validate", str(path)])


@pytest.mark.parametrize(
    ("run", "message"),
    [
        ("  fsdp: {teachers: shard}\n", "run.fsdp applies to run.parallel: fsdp only"),
        ("  parallel: fsdp\n  compile: default\n", "run.compile is not supported with run.parallel: fsdp"),
        ("  parallel: zero3\n", "Input should be 'ddp' or 'fsdp'"),
        ("  parallel: fsdp\n  fsdp: {teachers: all}\n", "Input should be 'replicate' or 'shard'"),
    ],
)
def test_validate_refuses_bad_sharding_settings_at_their_line(tmp_path, run, message):
    path, result = validate(tmp_path, GRAPH + run)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert message in text
    assert f"{path}:" in text and ": run" in text


def test_fsdp_settings_pass_validate(tmp_path):
    _, result = validate(tmp_path, GRAPH + "  parallel: fsdp\n  fsdp: {reshard_after_forward: false}\n")
    assert result.exit_code == 0, result.output


def test_one_process_with_fsdp_trains_exactly_as_without(tmp_path):
    runs = {}
    for name, overrides in {"ddp": [], "fsdp": ["run.parallel=fsdp", "run.fsdp.teachers=shard"]}.items():
        engine = Engine(loads_graph(GRAPH, overrides), out=tmp_path / name, show_progress=False)
        assert not engine.session.sharded  # nothing to shard over
        runs[name] = [r["loss"] for r in engine.run().history]
    assert runs["fsdp"] == runs["ddp"]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)


class Declared(nn.Module):
    _no_split_modules = ("Block", "Missing")

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.heads = nn.ModuleList([nn.Linear(4, 64), nn.Linear(64, 4)])


def test_shard_units_are_the_declared_or_the_largest_repeated_blocks():
    mmdit = MMDiT(MMDiTConfig(sample_size=(4, 4), hidden=16, depth=2, heads=2, num_classes=3))
    assert shard_unit_classes(mmdit) == ["JointBlock"]
    assert shard_unit_classes(Declared()) == ["Block"]  # declared, and present in the model
    undeclared = Declared()
    undeclared._no_split_modules = ()
    assert shard_unit_classes(undeclared) == ["Linear"]  # the two Linear heads outweigh the two Blocks
    assert shard_unit_classes(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == []


def test_teacher_sources_are_the_weighted_fields_the_routes_call():
    graph = loads_graph(GRAPH)
    engine = Engine(graph, write=False, show_progress=False)
    teacher, guided = engine.session.ctx.field("teacher"), engine.session.ctx.field("guided")
    sources = teacher_sources([guided], engine.session.ctx.built_fields())
    assert sources == [teacher]  # not the guidance operator around it, not the unused init field


def test_a_lockstep_rollout_calls_the_field_as_often_as_the_longest_process_and_records_the_same_states():
    sigmas = torch.linspace(1, 0, 7)
    noise = torch.randn(3, 1, 4, 4)
    plan = torch.tensor([[0, 2], [1, 1], [2, 0]])  # this process's rows stop after step 2
    calls: list[int] = []

    def field(x, sigma, cond):
        calls.append(x.shape[0])
        return -x * sigma.view(-1, 1, 1, 1)

    free, free_nfe = rollout_states(field, noise, Cond(), sigmas, plan)
    assert (free_nfe, calls) == (2, [3, 2])  # the rows still running at each step
    calls.clear()
    locked, locked_nfe = rollout_states(field, noise, Cond(), sigmas, plan, at_least=5)
    assert (locked_nfe, calls) == (5, [3, 2, 1, 1, 1])  # a longest row runs on to another process's step 5
    assert torch.equal(locked, free)


def test_a_plain_copy_rebuilt_from_a_state_dict_computes_what_the_model_computes():
    torch.manual_seed(0)
    model = MMDiT(MMDiTConfig(sample_size=(4, 4), hidden=16, depth=2, heads=2, num_classes=3)).eval()
    plain = PlainCopy(model)
    assert all(p.is_meta for p in plain.template.parameters())  # the template holds no memory
    copy = plain.build(model.state_dict(), torch.device("cpu"))
    x, sigma = torch.randn(2, 1, 4, 4), torch.rand(2)
    cond = Cond(label=torch.tensor([0, 2]))
    assert "pos_embed" not in model.state_dict()  # a non-persistent buffer: kept by PlainCopy itself
    torch.testing.assert_close(copy(x, sigma, cond), model(x, sigma, cond), rtol=0, atol=0)


def test_a_launch_whose_processes_did_not_join_one_group_is_refused():
    code = "from fieldkit.distill.session import make_accelerator; make_accelerator('mps')"
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}  # set by a launcher
    env = {**os.environ, "WORLD_SIZE": "2", **rendezvous, "FIELDKIT_LOAD_PLUGINS": ""}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "launched as 2 processes, but accelerate joined 1" in done.stderr
    assert "on CPUs set run.device: cpu" in done.stderr


def as_sharded(path: Path, processes: int) -> None:
    """Rewrite a checkpoint as an FSDP checkpoint of ``processes`` processes would be (its weights in shard
    files, which this one-process run never gets to read)."""
    state = load_checkpoint(path)
    state.sharded, state.student, state.optimizer = True, {}, {}
    state.scalars["processes"] = processes
    save_checkpoint(path.parent, state, keep_last=10)


def test_an_fsdp_checkpoint_resumed_without_its_processes_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "graph.yaml"
    path.write_text(GRAPH)
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, ["distill", str(path), "--out", str(out), "--no-progress"]).exit_code == 0
    for checkpoint in list_checkpoints(out / "checkpoints"):
        as_sharded(checkpoint, processes=2)
    before = {p: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()}
    args = ["distill", str(path), "--out", str(out), "--resume", "latest", "--set", "run.steps=3"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "FSDP shards written by 2 process(es); this run has 1" in text
    assert "--num_processes 2" in text
    assert {p: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()} == before
    # Whole weights are read from a sharded checkpoint in one process, or refused when it has no shards.
    with pytest.raises(CheckpointError, match="cannot read its FSDP shards"):
        load_weights(list_checkpoints(out / "checkpoints")[-1])
