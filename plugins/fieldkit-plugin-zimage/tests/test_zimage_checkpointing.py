"""``student.gradient_checkpointing: true`` on a Z-Image student: the gradients of the plain student."""

from __future__ import annotations

from pathlib import Path

import torch
from fieldkit_zimage.encode import prompt_features
from fieldkit_zimage.field import text_cond

from fieldkit import loads_graph
from fieldkit.distill.student import make_student
from fieldkit.graph import BuildContext
from fieldkit.graph.schema import StudentSpec


def test_a_zimage_lora_student_checkpoints_with_the_plain_gradients(
    zimage_plugin, tiny: Path, t2i_pipe
) -> None:
    base = BuildContext(loads_graph(f"fields:\n  base: {{type: zimage, path: '{tiny / 't2i'}'}}\n")).field(
        "base"
    )
    students = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same LoRA initialisation in both
        spec = StudentSpec(init="base", train="lora", gradient_checkpointing=checkpointing)
        students.append(make_student(base, spec))
    plain, ckpt = students
    assert ckpt.transformer.is_gradient_checkpointing and not plain.transformer.is_gradient_checkpointing
    assert not base.transformer.is_gradient_checkpointing  # the source (a teacher) is untouched
    segs = prompt_features(t2i_pipe, ["a red cat", "two dogs"], max_sequence_length=64, edit=False)
    cond = text_cond(segs, prompt_features(t2i_pipe, [""], max_sequence_length=64, edit=False)[0])
    x, sigma = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0.4, 0.9])
    grads = []
    for student in students:
        params = [p for p in student.parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(student(x, sigma, cond).square().mean(), params))
    assert len(grads[0]) > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
