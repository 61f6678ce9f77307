"""`fieldkit.lora`: a LoRA over a fieldkit model that shares the base's weights, merged, and as a student."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fieldkit import Cond, load_graph
from fieldkit.backbones.field import parameter_bytes
from fieldkit.distill.student import make_student
from fieldkit.errors import FieldkitError, GraphError
from fieldkit.graph.builder import BuildContext
from fieldkit.graph.readiness import check_trainable
from fieldkit.graph.schema import StudentSpec
from fieldkit.merge import merge_models
from fieldkit.models import MMDiT, MMDiTConfig
from fieldkit.models.lora import lora_tensors, save_lora, tuner_layers
from fieldkit.testing import random_lora_student

CONFIG = MMDiTConfig(sample_size=(4, 4), patch_size=2, hidden=16, depth=1, heads=2, text_dim=8, pooled_dim=8)
X, SIGMA = torch.randn(3, 1, 4, 4), torch.tensor([0.2, 0.5, 0.9])
COND = Cond(pooled=torch.randn(3, 8))


def _base(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = MMDiT(CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.2)
    return model.save_pretrained(tmp_path / "base")


def _lora(base: nn.Module, out: Path, seed: int) -> tuple[Path, nn.Module]:
    """A random rank-4 (alpha 8) LoRA of ``base`` saved at ``out``, and the student that holds it."""
    student = random_lora_student(base, seed=seed)
    save_lora(out, lora_tensors(dict(student.named_parameters())), alpha=8, diffusers=False)
    return out, student


def _module(ctx: BuildContext, name: str) -> nn.Module:
    field = ctx.field(name)
    assert isinstance(field, nn.Module)
    return field


def _graph(tmp_path: Path, body: str) -> BuildContext:
    if not (tmp_path / "base").is_dir():
        _base(tmp_path)
    path = tmp_path / "graph.yaml"
    path.write_text("fields:\n  base: {type: fieldkit.checkpoint, path: base}\n" + body)
    return BuildContext(load_graph(path))


def test_lora_teachers_compute_their_adapter_and_share_one_base(tmp_path: Path) -> None:
    ctx = _graph(tmp_path, "")
    base = _module(ctx, "base")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    _, a = _lora(base, tmp_path / "a", 1)
    _lora(base, tmp_path / "b", 2)
    ctx = _graph(
        tmp_path,
        "  a: {type: fieldkit.lora, base: base, path: a}\n"
        "  b: {type: fieldkit.lora, base: base, path: b, scale: 0.5}\n"
        "  zero: {type: fieldkit.lora, base: base, path: a, adapter: zero, scale: 0}\n"
        "  avg: {type: merge, fields: [a, b]}\n",
    )
    base, ta, tb, zero = (_module(ctx, n) for n in ("base", "a", "b", "zero"))
    with torch.no_grad():
        torch.testing.assert_close(ta(X, SIGMA, COND), a(X, SIGMA, COND))  # W x + (alpha / r) B A x
        torch.testing.assert_close(zero(X, SIGMA, COND), base(X, SIGMA, COND))  # scale 0: the base
        half = make_student(tb, StudentSpec(init="b"))  # the adapter merged at scale 0.5
        assert not tuner_layers(half)
        torch.testing.assert_close(half(X, SIGMA, COND), tb(X, SIGMA, COND), atol=1e-5, rtol=1e-4)
    for name, value in base.state_dict().items():  # the base computes as it did, unwrapped
        torch.testing.assert_close(value, before[name])
    assert not tuner_layers(base)
    storage = {p.data_ptr() for p in base.parameters()}
    for twin in (ta, tb, zero):
        adapted = {n: p for n, p in twin.named_parameters() if "lora_" not in n}
        assert {p.data_ptr() for p in adapted.values()} == storage
        assert not any(p.requires_grad for n, p in twin.named_parameters() if "lora_" in n)
    adapters = sum(
        p.numel() * p.element_size() for t in (ta, tb) for n, p in t.named_parameters() if "lora_" in n
    )
    assert parameter_bytes(nn.ModuleList([base, ta, tb])) == parameter_bytes(base) + adapters
    # the weight merge of two LoRA teachers: base + (delta_a + delta_b / 2) / 2, a plain model
    expected = merge_models([make_student(ta, StudentSpec(init="a")), half])
    avg = _module(ctx, "avg")
    assert not tuner_layers(avg)
    for name, value in avg.state_dict().items():
        torch.testing.assert_close(value, expected.state_dict()[name])


def test_a_missing_lora_folder_says_how_to_make_it(tmp_path: Path) -> None:
    _base(tmp_path)
    line = "  a: {type: fieldkit.lora, base: base, path: nowhere, missing: run train_a.sh}\n"
    path = tmp_path / "graph.yaml"
    path.write_text(
        "fields:\n  base: {type: fieldkit.checkpoint, path: base}\n"
        + line
        + "routes:\n  r: {field: a, data: {type: gaussian_mixture, classes: 2, shape: [1, 4, 4]}}\n"
        + "student: {init: base}\n"
    )
    graph = load_graph(path)
    with pytest.raises(
        GraphError, match=r"fields\.a\.path: no such file or folder: .*nowhere \(run train_a\.sh\)"
    ):
        check_trainable(graph)
    with pytest.raises(FieldkitError, match="no LoRA folder") as info:
        BuildContext(graph).field("a")
    assert info.value.hint == "run train_a.sh"


def test_a_lora_of_another_model_or_over_a_lora_is_refused(tmp_path: Path) -> None:
    ctx = _graph(tmp_path, "")
    _lora(_module(ctx, "base"), tmp_path / "a", 1)
    other = MMDiT(CONFIG.model_copy(update={"hidden": 32}))
    _lora(other, tmp_path / "wide", 1)
    ctx = _graph(
        tmp_path,
        "  wide: {type: fieldkit.lora, base: base, path: wide}\n"
        "  a: {type: fieldkit.lora, base: base, path: a}\n"
        "  aa: {type: fieldkit.lora, base: a, path: a}\n",
    )
    with pytest.raises(FieldkitError, match="does not fit this base"):
        ctx.field("wide")
    with pytest.raises(FieldkitError, match="must be a plain model field"):
        ctx.field("aa")
