"""``student.gradient_checkpointing: true`` on an SD3 student: the same loss and gradients, fewer saved
activations, and the frozen source left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fieldkit import Cond, loads_graph
from fieldkit.distill.student import make_student
from fieldkit.graph import BuildContext
from fieldkit.graph.schema import StudentSpec


def _loss_grads_and_saved(student: torch.nn.Module, cond: Cond) -> tuple[torch.Tensor, dict, int]:
    saved = 0

    def count(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += 1
        return t

    x = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        loss = student(x, torch.tensor([0.3, 0.8]), cond).square().mean()
    loss.backward()
    grads = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
    return loss.detach(), grads, saved


@pytest.mark.parametrize("train", ["lora", "full"])
def test_an_sd3_student_checkpoints_with_the_same_loss_and_grads(
    sd3_plugin, tiny: Path, prompt_cond: Cond, train: str
) -> None:
    base = BuildContext(loads_graph(f"fields:\n  base: {{type: sd3, path: '{tiny / 'sd3'}'}}\n")).field(
        "base"
    )
    torch.manual_seed(0)  # LoRA adapters are initialised from the global RNG: the same in both students
    plain = make_student(base, StudentSpec(init="base", train=train))
    torch.manual_seed(0)
    ckpt = make_student(base, StudentSpec(init="base", train=train, gradient_checkpointing=True))
    assert ckpt.transformer.is_gradient_checkpointing and not plain.transformer.is_gradient_checkpointing
    assert not base.transformer.is_gradient_checkpointing  # the source (a teacher) is untouched
    loss_plain, grads_plain, saved_plain = _loss_grads_and_saved(plain, prompt_cond)
    loss_ckpt, grads_ckpt, saved_ckpt = _loss_grads_and_saved(ckpt, prompt_cond)
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=0, atol=0)
    assert grads_ckpt.keys() == grads_plain.keys() and grads_plain
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-7)
    assert saved_ckpt < saved_plain / 2  # each block keeps its inputs; the rest is recomputed
