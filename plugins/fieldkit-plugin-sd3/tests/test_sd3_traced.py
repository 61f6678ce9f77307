"""``run.trace``: the SD3 transformer's no-grad passes replayed from a recording equal the eager passes bit
for bit (base, LoRA merged for the rollout, LoRA unmerged), follow the weights as they train, are recorded
once per key, and a run with them trains exactly the student a run without them trains."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from fieldkit import Cond, loads_graph
from fieldkit.backbones import traced
from fieldkit.distill.engine import Engine
from fieldkit.distill.student import make_student
from fieldkit.graph import BuildContext
from fieldkit.graph.schema import LoraSpec, StudentSpec
from fieldkit.models.lora import merged_lora


def _base(tiny: Path):
    graph = loads_graph(f"fields:\n  base: {{type: sd3, path: '{tiny / 'sd3'}'}}\n")
    return BuildContext(graph).field("base")


def _lora_student(tiny: Path):
    torch.manual_seed(0)
    student = make_student(_base(tiny), StudentSpec(init="base", train="lora", lora=LoraSpec(rank=4)))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero B: the merged weights differ from the base
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return student


def _inputs(cond: Cond, batch: int) -> tuple[torch.Tensor, torch.Tensor, Cond]:
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn((batch, 4, 8, 8), generator=gen)
    sigma = torch.rand(batch, generator=gen)
    rows = torch.arange(batch) % cond.batch_size
    return x, sigma, cond.index(rows)


def _keys(field) -> dict:
    return traced._REPLAYS[field.transformer]


@pytest.mark.parametrize("batch", [1, 3])
def test_replayed_passes_equal_the_eager_ones_bit_for_bit(
    sd3_plugin, tiny: Path, prompt_cond: Cond, batch: int
) -> None:
    teacher, student = _base(tiny), _lora_student(tiny)
    x, sigma, cond = _inputs(prompt_cond, batch)
    with torch.inference_mode():
        eager = {
            "base": teacher(x, sigma, cond),
            "lora": student(x, sigma, cond),
        }
        with merged_lora(student):
            eager["merged"] = student(x, sigma, cond)
        with traced.replayed_passes():
            for _ in range(3):  # the first call records and checks; later ones replay
                assert torch.equal(teacher(x, sigma, cond), eager["base"])
                assert torch.equal(student(x, sigma, cond), eager["lora"])
                with merged_lora(student):
                    assert torch.equal(student(x, sigma, cond), eager["merged"])
    assert len(_keys(teacher)) == 1 and all(r is not None for r in _keys(teacher).values())
    # the student's merged and unmerged passes run different peft code: two recordings
    assert len(_keys(student)) == 2 and all(r is not None for r in _keys(student).values())
    assert not torch.equal(eager["merged"], eager["base"])


def test_a_replay_follows_the_weights_as_they_train(sd3_plugin, tiny: Path, prompt_cond: Cond) -> None:
    student = _lora_student(tiny)
    x, sigma, cond = _inputs(prompt_cond, 2)
    with torch.inference_mode(), traced.replayed_passes(), merged_lora(student):
        before = student(x, sigma, cond)
    with torch.no_grad():  # what an optimizer step does: the adapters change in place
        for name, p in student.named_parameters():
            if "lora_A" in name:
                p.mul_(1.5)
    with torch.inference_mode():
        with merged_lora(student):
            eager = student(x, sigma, cond)
        with traced.replayed_passes(), merged_lora(student):
            replayed = student(x, sigma, cond)
    assert not torch.equal(eager, before)
    assert torch.equal(replayed, eager)
    assert len(_keys(student)) == 1  # the same key: no new recording for new weights


def test_passes_with_gradients_or_outside_a_block_or_with_hooks_stay_eager(
    sd3_plugin, tiny: Path, prompt_cond: Cond
) -> None:
    teacher = _base(tiny)
    x, sigma, cond = _inputs(prompt_cond, 1)
    with torch.inference_mode():
        teacher(x, sigma, cond)  # no block: eager
    with traced.replayed_passes():
        teacher(x, sigma, cond)  # gradients on: eager
    assert teacher.transformer not in traced._REPLAYS
    seen = []
    handle = teacher.transformer.transformer_blocks[0].register_forward_hook(lambda *a: seen.append(1))
    try:
        structure = traced.walk(teacher.transformer)
        assert structure.refusal == "module transformer_blocks.0 has hooks"
        with torch.inference_mode(), traced.replayed_passes():
            teacher(x, sigma, cond)
        assert seen == [1] and teacher.transformer not in traced._REPLAYS  # the hook ran: the pass was eager
    finally:
        handle.remove()
    with traced.replayed_passes(enabled=False), torch.inference_mode():
        teacher(x, sigma, cond)
    assert teacher.transformer not in traced._REPLAYS


def _engine(tiny: Path, folder: Path, trace: bool) -> Engine:
    prompts = folder / "prompts.csv"
    with prompts.open("w", newline="") as fh:
        csv.writer(fh).writerows([["prompt"], ["a red cat"], ["two dogs on a hill"], ["a blue house"]])
    text = f"""
fields:
  teacher: {{type: sd3, path: '{tiny / "sd3"}'}}
routes:
  t2i:
    field: teacher
    data: {{type: sd3.prompts, file: '{prompts}', pipeline: '{tiny / "sd3"}', shape: [4, 8, 8],
            max_sequence_length: 16}}
student: {{init: teacher, train: lora, lora: {{rank: 4}}}}
method: {{type: danceopd, k: 1, query: low}}
flow: {{steps: 8, shift: 3.0}}
run: {{steps: 4, batch_size: 2, lr: 1.0e-3, device: cpu, trace: {str(trace).lower()}}}
"""
    engine = Engine(loads_graph(text), None, write=False, show_progress=False)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-zero B: the student differs from its teacher, so the loss moves it
        for name, p in engine.session.student.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return engine


def test_a_run_with_replayed_passes_trains_the_same_student_bit_for_bit(
    sd3_plugin, tiny: Path, tmp_path: Path
) -> None:
    runs = {}
    for trace in (False, True):
        engine = _engine(tiny, tmp_path, trace)
        assert engine.session.replay is trace
        losses = [(r.update.loss, r.update.grad_norm, r.update.rollout_nfe) for r in engine.steps()]
        replays = traced._REPLAYS.get(engine.session.student.transformer)
        if trace:  # the rollout's merged passes were recorded and replayed
            assert replays is not None and any(r is not None for r in replays.values())
        else:
            assert replays is None
        runs[trace] = (losses, {k: v.clone() for k, v in engine.session.student.state_dict().items()})
    assert runs[True][0] == runs[False][0] and len(runs[True][0]) == 4
    assert all(grad_norm > 0 for _, grad_norm, _ in runs[True][0])
    assert runs[True][1].keys() == runs[False][1].keys()
    for name, tensor in runs[False][1].items():
        assert torch.equal(runs[True][1][name], tensor), name


def test_adapter_fields_sharing_one_transformer_replay_each_their_own_adapter(
    sd3_plugin, tiny: Path, prompt_cond: Cond
) -> None:
    """LoRA teachers over one shared transformer: each call switches the adapter (peft state, part of the
    key), so each field's passes have their own recording and equal its eager passes bit for bit."""
    ctx = BuildContext(
        loads_graph(
            f"""
fields:
  base: {{type: sd3, path: '{tiny / "sd3"}'}}
  a: {{type: sd3.lora, base: base, path: '{tiny / "lora-a"}'}}
  b: {{type: sd3.lora, base: base, path: '{tiny / "lora-b"}', scale: 0.5}}
"""
        )
    )
    fields = {name: ctx.field(name) for name in ("base", "a", "b")}
    x, sigma, cond = _inputs(prompt_cond, 2)
    with torch.inference_mode():
        eager = {name: field(x, sigma, cond) for name, field in fields.items()}
        with traced.replayed_passes():
            for _ in range(2):  # interleaved: every call switches the shared transformer
                for name in ("a", "base", "b", "a"):
                    assert torch.equal(fields[name](x, sigma, cond), eager[name]), name
    assert len(_keys(fields["base"])) == 3 and all(r is not None for r in _keys(fields["base"]).values())
    assert not torch.equal(eager["a"], eager["base"]) and not torch.equal(eager["a"], eager["b"])
