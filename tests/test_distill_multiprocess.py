"""Data parallelism through accelerate (DDP, gloo, two CPU processes).

Documented semantics (fieldkit/data.py, Shard): every process draws the same global batch and noise and
keeps its own rows, so W processes with ``run.batch_size`` b train exactly what one process trains with
batch W b. Only the main process writes metrics and checkpoints; frozen fields are never wrapped for DDP.

Launched as ``accelerate launch --multi_gpu --num_processes 2 tests/multiprocess_worker.py ...`` (run as
``python -m accelerate.commands.launch``, the venv's own accelerate): with no GPU visible and
``run.device: cpu`` both processes run on CPU with the gloo backend. (``accelerate launch --cpu`` starts
a single process unless MPI is used.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).parent / "multiprocess_worker.py"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(tmp: Path, processes: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in one process, or under ``accelerate launch --multi_gpu`` (gloo on CPUs)."""
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
        launcher += ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no"]
        launcher += ["--dynamo_backend", "no", "--main_process_port", str(free_port())]
        cmd = [*launcher, *args]
    env = {
        **os.environ,
        "FIELDKIT_LOAD_PLUGINS": "",
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(tmp / "hf"),
        "CUDA_VISIBLE_DEVICES": "",
    }
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)


def launch(
    tmp: Path,
    name: str,
    processes: int,
    *overrides: str,
    graph: Path | None = None,
    sd3: bool = False,
    resume: str | None = None,
) -> tuple[Path, list[dict], list[dict]]:
    out, results = tmp / name / "run", tmp / name / "results"
    args = [str(WORKER), "--out", str(out), "--results", str(results)]
    args += ["--graph", str(graph)] if graph is not None else []
    args += ["--sd3"] if sd3 else []
    args += ["--resume", resume] if resume is not None else []
    for text in overrides:
        args += ["--set", text]
    done = run_processes(tmp, processes, args)
    assert done.returncode == 0, f"{' '.join(done.args)}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    infos = [json.loads((results / f"rank{r}.json").read_text()) for r in range(processes)]
    weights = [load_file(results / f"rank{r}.safetensors") for r in range(processes)]
    return out, infos, weights


@pytest.mark.parametrize("student", ["full", "lora"])
def test_two_processes_with_batch_b_train_what_one_process_trains_with_2b(tmp_path, student):
    extra = ["student.train=lora", "student.lora.rank=2"] if student == "lora" else []
    out2, infos2, weights2 = launch(tmp_path, "two", 2, "run.batch_size=4", *extra)
    _, infos1, weights1 = launch(tmp_path, "one", 1, "run.batch_size=8", *extra)
    assert [i["world"] for i in infos2] == [2, 2] and infos1[0]["world"] == 1
    assert infos2[0]["model"] == "DistributedDataParallel" and infos1[0]["model"] != "DistributedDataParallel"
    # Both ranks hold the same weights, and they are those of one process with the doubled batch.
    for name, value in weights1[0].items():
        assert torch.equal(weights2[0][name], weights2[1][name]), name
        torch.testing.assert_close(weights2[0][name], value, rtol=1e-5, atol=1e-6)
    trainable = infos1[0]["trainable"]
    assert trainable == infos2[0]["trainable"]
    if student == "lora":
        assert trainable and all("lora_" in n for n in trainable)
    # Every rank took the same routes and logged the global batch's loss (what one process logs).
    h1, h2a, h2b = infos1[0]["history"], infos2[0]["history"], infos2[1]["history"]
    assert [r["route"] for r in h2a] == [r["route"] for r in h2b] == [r["route"] for r in h1]
    for a, b, ref in zip(h2a, h2b, h1, strict=True):
        assert a["loss"] == b["loss"]
        assert a["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
    # Only the main process wrote: one metrics line per step, checkpoints without leftovers.
    lines = [json.loads(x) for x in (out2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 9))
    assert sorted(p.name for p in (out2 / "checkpoints").iterdir()) == ["step-00000004", "step-00000008"]
    # Every process knows the checkpoint the main process wrote (its callbacks' on_checkpoint see it).
    assert infos2[0]["checkpoint"].endswith("step-00000008")
    assert infos2[1]["checkpoint"] == infos2[0]["checkpoint"]
    ckpt = load_file(out2 / "checkpoints" / "step-00000008" / "student.safetensors")
    for name, value in ckpt.items():
        assert torch.equal(value, weights2[0][name])
    # Frozen fields (teachers, and the init node the student was copied from) stay out of DDP, grad-free.
    for info in (*infos2, *infos1):
        assert info["frozen"] == {n: {"wrapped": False, "grads": False} for n in ("ta", "tb", "init")}


# -- the documented workflow on real students: fieldkit's MMDiT and the tiny SD3 transformer -----------------

MMDIT_GRAPH = """
fields:
  teacher: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4], std: 0.2}
  guided: {type: guidance, field: teacher, w: 2.0}
  init:
    type: fieldkit.mmdit
    seed: 1
    config: {sample_size: [4, 4], patch_size: 2, hidden: 16, depth: 2, heads: 2, num_classes: 3,
             text_dim: 8, pooled_dim: 8, frequency_dim: 16}
routes:
  t2i: {field: guided, data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4], std: 0.2}}
student: {init: init}
flow: {steps: 4}
run: {steps: 4, batch_size: 4, lr: 1.0e-3, log_every: 1, checkpoint_every: 2, device: cpu}
"""


def sd3_graph(tmp: Path) -> Path:
    """One T2I route of examples/sd3/tiny.yaml on a tiny random SD3.5 pipeline (prompt embeddings cached
    by the first, one-process run)."""
    from fieldkit_sd3.tiny import make_tiny_pipeline

    make_tiny_pipeline(tmp / "sd3")
    (tmp / "prompts.csv").write_text("prompt\na red cat\ntwo dogs on a hill\na blue house\na small boat\n")
    graph = tmp / "sd3.yaml"
    graph.write_text(
        """
fields:
  base: {type: sd3, path: sd3, dtype: float32}
  t2i_cfg: {type: guidance, field: base, w: 3.5}
routes:
  t2i:
    field: t2i_cfg
    data: {type: sd3.prompts, file: prompts.csv, pipeline: sd3, shape: [4, 8, 8], max_sequence_length: 16,
           dtype: float32}
student: {init: base}
flow: {steps: 4, shift: 3.0}
run: {steps: 3, batch_size: 2, lr: 2.0e-4, log_every: 1, checkpoint_every: 3, device: cpu}
"""
    )
    return graph


@pytest.mark.parametrize(
    ("model", "student"), [("mmdit", "full"), ("mmdit", "lora"), ("sd3", "lora"), ("sd3", "full")]
)
def test_real_students_two_processes_at_batch_b_match_one_process_at_2b(tmp_path, model, student):
    if model == "mmdit":
        graph = tmp_path / "mmdit.yaml"
        graph.write_text(MMDIT_GRAPH)
        batch = 4
    else:
        graph = sd3_graph(tmp_path)
        batch = 2
    extra = ["student.train=lora", "student.lora.rank=2"] if student == "lora" else []
    sd3 = model == "sd3"
    # One process first: it writes the SD3 prompt-embedding cache that both runs then read.
    _, infos1, weights1 = launch(
        tmp_path, "one", 1, f"run.batch_size={2 * batch}", *extra, graph=graph, sd3=sd3
    )
    out2, infos2, weights2 = launch(
        tmp_path, "two", 2, f"run.batch_size={batch}", *extra, graph=graph, sd3=sd3
    )
    assert infos2[0]["model"] == "DistributedDataParallel" and [i["world"] for i in infos2] == [2, 2]
    trainable = infos1[0]["trainable"]
    assert trainable == infos2[0]["trainable"] and trainable
    assert all("lora_" in n for n in trainable) == (student == "lora")
    for name, value in weights1[0].items():
        assert torch.equal(weights2[0][name], weights2[1][name]), name
        torch.testing.assert_close(weights2[0][name], value, rtol=1e-4, atol=1e-6)
    h1, h2 = infos1[0]["history"], infos2[0]["history"]
    assert [r["loss"] for r in h2] == pytest.approx([r["loss"] for r in h1], rel=1e-4)
    lines = [json.loads(x) for x in (out2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, len(h1) + 1))  # the main process wrote, once
    for info in (*infos2, *infos1):
        assert not any(f["wrapped"] or f["grads"] for f in info["frozen"].values())


def test_the_documented_command_trains_one_run_folder_with_two_processes(tmp_path):
    """docs/reliability.md: ``accelerate launch --multi_gpu --num_processes 2 -m fieldkit distill ...``."""
    graph = tmp_path / "mmdit.yaml"
    graph.write_text(MMDIT_GRAPH.replace("device: cpu", "device: auto"))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--main_process_port", str(free_port()), "-m", "fieldkit", "distill", str(graph)]
    cmd += ["--out", str(out), "--no-progress"]
    env = {**os.environ, "FIELDKIT_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-6000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert (out / "student" / "model.safetensors").is_file() and (out / "fieldkit-run.json").is_file()
    assert "Error" not in done.stderr
