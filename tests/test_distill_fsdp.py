"""FSDP (``run.parallel: fsdp``) on two CPU processes (gloo): the same training as one process at twice the
batch, sharded checkpoints that resume to the same losses, an export that gathers the whole student, frozen
teachers sharded or replicated alike, and mismatched checkpoints refused.

Launched like tests/test_distill_multiprocess.py (``accelerate launch --multi_gpu`` with no GPU visible).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distill_multiprocess import MMDIT_GRAPH, launch, run_processes, sd3_graph

pytestmark = pytest.mark.slow

FSDP = "run.parallel=fsdp"
LORA = ("student.train=lora", "student.lora.rank=2")

# MMDIT_GRAPH with a weighted teacher (an MMDiT under classifier-free guidance) instead of the analytic one.
TEACHER_GRAPH = MMDIT_GRAPH.replace(
    "  guided: {type: guidance, field: teacher, w: 2.0}",
    """  teacher_net:
    type: fieldkit.mmdit
    seed: 7
    config: {sample_size: [4, 4], patch_size: 2, hidden: 16, depth: 2, heads: 2, num_classes: 3,
             text_dim: 8, pooled_dim: 8, frequency_dim: 16}
  guided: {type: guidance, field: teacher_net, w: 2.0}""",
)


# MMDIT_GRAPH with a metric on its route: the final evaluation scores the gathered student.
SCORED_GRAPH = MMDIT_GRAPH.replace(
    "std: 0.2}}\n",
    "std: 0.2},\n        metrics: [{type: gaussian_mixture, classes: 3, shape: [1, 4, 4], std: 0.2}]}\n",
)
assert SCORED_GRAPH != MMDIT_GRAPH


def exported(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the run's exported student folder."""
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted((run / "student").glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def assert_close_states(a: dict, b: dict, rtol: float = 1e-4) -> None:
    assert sorted(a) == sorted(b)
    for name, value in b.items():
        torch.testing.assert_close(a[name], value, rtol=rtol, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("model", "student"), [("mmdit", "full"), ("mmdit", "lora"), ("sd3", "lora"), ("sd3", "full")]
)
def test_two_fsdp_processes_at_batch_b_train_what_one_process_trains_at_2b(tmp_path, model, student):
    if model == "mmdit":
        graph, batch = tmp_path / "mmdit.yaml", 4
        graph.write_text(SCORED_GRAPH)
    else:
        graph, batch = sd3_graph(tmp_path), 2
    extra = LORA if student == "lora" else ()
    sd3 = model == "sd3"
    out1, infos1, weights1 = launch(
        tmp_path, "one", 1, f"run.batch_size={2 * batch}", *extra, graph=graph, sd3=sd3
    )
    out2, infos2, weights2 = launch(
        tmp_path, "two", 2, FSDP, f"run.batch_size={batch}", *extra, graph=graph, sd3=sd3
    )
    assert [i["sharded"] for i in infos2] == [True, True] and infos2[0]["model"].startswith("FSDP")
    assert not infos1[0]["sharded"]  # one process: fsdp or not, nothing to shard over
    # Every process gathered the same whole student, and it is the one-process student.
    for name in weights2[0]:
        assert torch.equal(weights2[0][name], weights2[1][name]), name
    assert_close_states(weights2[0], weights1[0])
    h1, h2 = infos1[0]["history"], infos2[0]["history"]
    assert [r["loss"] for r in h2] == pytest.approx([r["loss"] for r in h1], rel=1e-4)
    assert [r["grad_norm"] for r in h2] == pytest.approx([r["grad_norm"] for r in h1], rel=1e-4)
    # The exported folder holds the whole (gathered) student, loadable by one process, equal to one process's.
    assert_close_states(exported(out2), exported(out1))
    # Checkpoints hold one shard file per process (plus the DCP metadata), covered by the manifest.
    last = sorted((out2 / "checkpoints").iterdir())[-1]
    files = json.loads((last / "manifest.json").read_text())["files"]
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "rng.safetensors", "state.json"} <= set(files)
    assert "student.safetensors" not in files
    lines = [json.loads(x) for x in (out2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, len(h1) + 1))  # the main process wrote, once
    assert list((out2 / "samples").glob("*.png"))  # the sample grid of the gathered student
    if model == "mmdit":  # the final evaluation scored the gathered student as one process scores its own
        scores1, scores2 = (json.loads((o / "results.json").read_text())["rows"] for o in (out1, out2))
        assert [r["field"] for r in scores2] == [r["field"] for r in scores1] and scores1
        for a, b in zip(scores2, scores1, strict=True):
            assert a.keys() == b.keys()
            assert [a[k] for k in a if k not in ("field", "route")] == pytest.approx(
                [b[k] for k in b if k not in ("field", "route")], rel=1e-3
            )
    if student == "lora":  # the LoRA adapter, exported from the sharded checkpoint in one process
        from fieldkit.export import export_run

        adapters = [export_run(o, "peft", tmp_path / f"peft-{o.parent.name}").folder for o in (out1, out2)]
        one, two = (load_file(a / "adapter_model.safetensors") for a in adapters)
        assert one and sorted(one) == sorted(two)
        assert_close_states(two, one)


def test_a_killed_fsdp_run_resumes_from_its_shards_to_the_uninterrupted_losses(tmp_path):
    graph = tmp_path / "mmdit.yaml"
    graph.write_text(MMDIT_GRAPH)
    overrides = (FSDP, "student.ema=0.9", "run.grad_accum=2", "run.batch_size=2")
    whole, infos, weights = launch(tmp_path, "whole", 2, *overrides, graph=graph)
    # What a kill after step 3 leaves: the checkpoint of step 2, metrics up to step 3, no export.
    killed = tmp_path / "killed" / "run"
    shutil.copytree(whole, killed)
    shutil.rmtree(killed / "checkpoints" / "step-00000004")
    shutil.rmtree(killed / "student")
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    (killed / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")
    _, resumed, weights_r = launch(tmp_path, "killed", 2, *overrides, graph=graph, resume="latest")
    assert [r["step"] for r in resumed[0]["history"]] == [3, 4]
    assert [r["loss"] for r in resumed[0]["history"]] == [r["loss"] for r in infos[0]["history"][2:]]
    for name, value in weights[0].items():
        assert torch.equal(weights_r[0][name], value), name
    # The EMA came back from its shards too: the exported (EMA) students are equal.
    for name, value in exported(whole).items():
        assert torch.equal(exported(killed)[name], value), name


def test_sharded_and_replicated_teachers_train_the_same_student(tmp_path):
    graph = tmp_path / "teacher.yaml"
    graph.write_text(TEACHER_GRAPH)
    _, replicated, w_rep = launch(tmp_path, "replicate", 2, FSDP, graph=graph)
    _, sharded, w_shard = launch(tmp_path, "shard", 2, FSDP, "run.fsdp.teachers=shard", graph=graph)
    assert [i["sharded_fields"] for i in replicated] == [[], []]
    # The teacher is sharded (its guidance operator is not: it holds no weights of its own).
    assert [i["sharded_fields"] for i in sharded] == [["teacher_net"], ["teacher_net"]]
    losses = [r["loss"] for r in replicated[0]["history"]]
    assert [r["loss"] for r in sharded[0]["history"]] == pytest.approx(losses, rel=1e-5)
    assert_close_states(w_shard[0], w_rep[0], rtol=1e-5)


def distill(tmp: Path, processes: int, graph: Path, out: Path, *overrides: str, resume: bool = False):
    args = ["-m", "fieldkit", "distill", str(graph), "--out", str(out), "--no-progress"]
    args += ["--resume", "latest"] if resume else []
    for text in overrides:
        args += ["--set", text]
    return run_processes(tmp, processes, args)


def test_checkpoints_of_another_sharding_are_refused_with_the_fix(tmp_path):
    graph = tmp_path / "mmdit.yaml"
    graph.write_text(MMDIT_GRAPH)
    fsdp_run, ddp_run = tmp_path / "fsdp", tmp_path / "ddp"
    assert distill(tmp_path, 2, graph, fsdp_run, FSDP).returncode == 0
    assert distill(tmp_path, 1, graph, ddp_run).returncode == 0
    # A corrupted newest shard: skipped with its reason, the run resumes from the one before (2 processes).
    shard = fsdp_run / "checkpoints" / "step-00000004" / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-1] + bytes([shard.read_bytes()[-1] ^ 1]))
    done = distill(tmp_path, 2, graph, fsdp_run, FSDP, "run.steps=5", resume=True)
    assert done.returncode == 0, done.stderr[-3000:]
    text = " ".join(done.stderr.split())
    assert "__1_0.distcp is corrupted" in text
    lines = [json.loads(x) for x in (fsdp_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5]  # steps 3 and 4 trained again from step 2
    # Shards of another student (another graph): refused, exit 2, nothing written.
    other = tmp_path / "other.yaml"
    other.write_text(MMDIT_GRAPH.replace("hidden: 16", "hidden: 32"))
    before = sorted(p.name for p in (fsdp_run / "checkpoints").iterdir())
    done = distill(tmp_path, 2, other, fsdp_run, FSDP, "run.steps=6", resume=True)
    assert done.returncode != 0 and "exitcode : 2" in " ".join(done.stderr.split())
    assert "its sharded state does not fit this run's student" in " ".join(done.stderr.split())
    assert sorted(p.name for p in (fsdp_run / "checkpoints").iterdir()) == before
    # Written by 2 processes, resumed by 1.
    done = distill(tmp_path, 1, graph, fsdp_run, FSDP, "run.steps=6", resume=True)
    assert done.returncode == 2, done.stderr[-3000:]
    text = " ".join(done.stderr.split())
    assert "FSDP shards written by 2 process(es); this run has 1" in text
    assert "--num_processes 2" in text and "Traceback" not in done.stderr
    # A DDP checkpoint resumed under FSDP: every process refuses it (exit 2), no traceback.
    done = distill(tmp_path, 2, graph, ddp_run, FSDP, "run.steps=6", resume=True)
    assert done.returncode != 0
    text = " ".join(done.stderr.split())
    assert "written without FSDP" in text and "run.parallel: ddp" in text
    assert "exitcode : 2" in text  # the launcher reports the first process that stopped
    assert "[rank0]: Traceback" not in done.stderr and "[rank1]: Traceback" not in done.stderr
