"""``run.compile`` (fieldkit.compile): compiled forwards compute what eager ones do, for full and LoRA
students and the SD3 plugin's transformer; the shrinking rollout batch traces no graph per size; CUDA graphs
and bad values are refused with one clear message.

Most checks compile with torch.compile's ``eager`` backend: dynamo traces the same graphs, with the same
guards and dynamic shapes, as for inductor, and runs them without generating code (seconds instead of minutes
on a CPU). Inductor itself runs on the engine's step of a world small enough to compile in seconds, and
(slow) on the MMDiT step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_distill_engine import AFFINE
from torch import nn
from torch._dynamo.utils import counters

from fieldkit import loads_graph
from fieldkit.compile import CompiledForward, bucket, check_mode, compile_model, repeated_blocks
from fieldkit.cond import Cond
from fieldkit.distill.engine import Engine
from fieldkit.errors import FieldkitError, GraphError
from fieldkit.flow import rollout_states, sigma_schedule
from fieldkit.graph.schema import LoraSpec
from fieldkit.models.lora import add_lora, merged_lora
from fieldkit.models.mmdit import MMDiT, MMDiTConfig

BACKEND = "eager"  # dynamo's tracing without code generation (see the module doc)
TINY = MMDiTConfig(sample_size=(4, 4), patch_size=2, hidden=16, depth=3, heads=2, text_dim=8, pooled_dim=8)


def tiny_mmdit(seed: int = 0) -> MMDiT:
    torch.manual_seed(seed)
    model = MMDiT(TINY)
    with torch.no_grad():  # the zero-initialised modulations and output layer: give every pass real work
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def cond(n: int, seed: int = 0) -> Cond:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, 5, dtype=torch.bool)
    mask[:, -1] = False
    return Cond(text=torch.randn(n, 5, 8, generator=g), text_mask=mask, pooled=torch.randn(n, 8, generator=g))


def step(
    model: nn.Module, indices: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A DanceOPD-shaped step: an early-stopped rollout whose batch shrinks (no grad, LoRA merged), then the
    one forward + backward at the queried states; returns the loss and the gradients."""
    n = indices.shape[0]
    g = torch.Generator().manual_seed(seed)
    noise, c, sigmas = torch.randn(n, 1, 4, 4, generator=g), cond(n, seed), sigma_schedule(8, 3.0)
    with torch.inference_mode(), merged_lora(model):
        states, _ = rollout_states(model, noise, c, sigmas, indices)
    x, sigma = states[:, 0].clone(), sigmas[indices[:, 0]]
    loss = model(x, sigma, c).square().mean()
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_close_steps(eager: nn.Module, compiled: nn.Module, plans: list[torch.Tensor]) -> None:
    for i, plan in enumerate(plans):
        loss_e, grads_e = step(eager, plan, i)
        loss_c, grads_c = step(compiled, plan, i)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        assert grads_c.keys() == grads_e.keys() and grads_e
        for k in grads_e:
            torch.testing.assert_close(grads_c[k], grads_e[k], rtol=1e-4, atol=1e-6)


PLANS = [
    torch.tensor([[6], [2], [5], [0], [6], [3]]),
    torch.tensor([[4], [7], [1]]),
    torch.tensor([[5], [3]]),
]


def graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


# -- what is compiled ------------------------------------------------------------------------------------


def test_regions_are_the_blocks_of_the_repeated_stack():
    model = tiny_mmdit()
    assert repeated_blocks(model) == list(model.blocks)
    assert repeated_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == []  # no stack: compiled whole

    class Named(nn.Module):  # diffusers' convention names the block classes
        _repeated_blocks = ("ReLU",)

        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU()])

    named = Named()
    assert repeated_blocks(named) == [named.layers[1], named.layers[3]]
    assert compile_model(model, "default") == TINY.depth
    assert all(isinstance(b._compiled_call_impl, CompiledForward) for b in model.blocks)
    assert model._compiled_call_impl is None
    assert compile_model(model, "default") == 0  # already compiled: left alone
    eager = copy.deepcopy(model)  # what export and EMA copies see: an eager model with the same weights
    assert all(m._compiled_call_impl is None for m in eager.modules())
    assert eager.state_dict().keys() == tiny_mmdit().state_dict().keys()


@given(st.integers(1, 4096))
def test_buckets_cover_a_batch_with_under_half_again_as_many_rows(n):
    size = bucket(n)
    assert n <= size < max(1.5 * n, 2)
    assert size & (size - 1) == 0 or (size // 3) & (size // 3 - 1) == 0  # 2^k or 3 * 2^k
    assert bucket(size) == size


# -- compiled passes compute what eager ones do -------------------------------------------------------------


@pytest.mark.parametrize("batch", ["dynamic", pytest.param("buckets", marks=pytest.mark.slow)])
def test_compiled_step_gives_the_eager_loss_and_gradients(batch):
    eager = tiny_mmdit()
    compiled = copy.deepcopy(eager)
    compile_model(compiled, "default", batch=batch, backend=BACKEND)
    assert_close_steps(eager, compiled, PLANS)


@pytest.mark.slow
@pytest.mark.parametrize("regional", [True, False])
def test_inductor_compiled_mmdit_step_gives_the_eager_loss_and_gradients(regional):
    eager = tiny_mmdit()
    compiled = copy.deepcopy(eager)
    compile_model(compiled, "default", regional=regional)
    assert_close_steps(eager, compiled, PLANS)


def test_the_shrinking_rollout_batch_traces_no_graph_per_size():
    model = tiny_mmdit()
    compile_model(model, "default", backend=BACKEND)
    step(model, PLANS[0])
    traced = graphs()
    # New batch sizes (2-6 rows, at every stage of their rollouts) reuse the dynamic graphs.
    for i, plan in enumerate([torch.tensor([[7], [6], [1], [3], [2]]), torch.tensor([[7], [5], [4], [6]])]):
        step(model, plan, i)
    assert graphs() == traced


def test_a_lora_student_compiles_with_its_merged_rollout():
    eager = add_lora(tiny_mmdit(), LoraSpec(rank=2))
    with torch.no_grad():
        for name, p in eager.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    compiled = copy.deepcopy(eager)
    compile_model(compiled, "default", backend=BACKEND)
    assert_close_steps(eager, compiled, PLANS[:2])
    assert all(k.split(".")[-2] in ("default",) for k in step(compiled, PLANS[2])[1])  # only adapters train


def test_the_sd3_transformer_compiles_per_joint_block():
    fieldkit_sd3 = pytest.importorskip("fieldkit_sd3")
    from fieldkit_sd3.field import SD3Field

    config = {
        "sample_size": 8,
        "patch_size": 2,
        "in_channels": 4,
        "out_channels": 4,
        "num_layers": 2,
        "attention_head_dim": 8,
        "num_attention_heads": 2,
        "joint_attention_dim": 16,
        "caption_projection_dim": 16,
        "pooled_projection_dim": 16,
        "pos_embed_max_size": 4,
    }
    eager = SD3Field(SD3Field.build_transformer(config, seed=0))
    compiled = copy.deepcopy(eager)
    assert compile_model(compiled, "default", backend=BACKEND) == 2
    assert fieldkit_sd3 is not None and repeated_blocks(compiled) == list(
        compiled.transformer.transformer_blocks
    )
    g = torch.Generator().manual_seed(0)
    for n in (3, 2):
        x, sigma = torch.randn(n, 4, 8, 8, generator=g), torch.rand(n, generator=g)
        c = Cond(text=torch.randn(n, 6, 16, generator=g), pooled=torch.randn(n, 16, generator=g))
        with torch.inference_mode():
            torch.testing.assert_close(compiled(x, sigma, c), eager(x, sigma, c), rtol=1e-5, atol=1e-5)


# -- refusals ------------------------------------------------------------------------------------------------


def test_cuda_graphs_are_refused_off_cuda_with_what_to_use_instead():
    with pytest.raises(
        FieldkitError, match="reduce-overhead records CUDA graphs and needs a CUDA device"
    ) as info:
        check_mode("reduce-overhead", "cpu")
    assert "run.compile: default" in str(info.value)
    with pytest.raises(FieldkitError, match="must be one of"):
        check_mode("fast", "cpu")
    check_mode("max-autotune-no-cudagraphs", "cpu")  # no CUDA graphs: fine anywhere


def engine_graph(mode: str, device: str = "cpu") -> str:
    """The engine tests' affine world, ``run.compile: mode`` (on the ``run:`` line, line 11)."""
    return AFFINE.replace("device: cpu}", f"device: {device}, compile: {mode}}}").replace(
        "steps: 300", "steps: 3"
    )


@pytest.mark.parametrize(
    ("mode", "device", "message"),
    [
        ("reduce-overhead", "cpu", "reduce-overhead records CUDA graphs and needs a CUDA device"),
        ("max-autotune", "mps", "max-autotune records CUDA graphs and needs a CUDA device"),
        ("fast", "cpu", "Input should be 'off', 'default', 'reduce-overhead'"),
    ],
)
def test_validate_refuses_bad_values_at_their_line(distill_world, tmp_path, mode, device, message):
    from fieldkit import load_graph

    path = tmp_path / "graph.yaml"
    path.write_text(engine_graph(mode, device))
    with pytest.raises(GraphError, match=message) as info:
        load_graph(path)
    assert str(info.value).startswith(f"{path}:11: run.compile:")


def test_yaml_off_and_on_are_off_and_the_default_mode(distill_world):
    assert loads_graph(engine_graph("off")).spec.run.compile == "off"
    assert loads_graph(engine_graph("on")).spec.run.compile == "default"


def test_cuda_graphs_on_an_auto_device_without_cuda_are_refused_when_the_engine_builds(distill_world):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(FieldkitError, match="needs a CUDA device; this run is on cpu"):
        Engine(loads_graph(engine_graph("reduce-overhead", "auto")), write=False, show_progress=False)


def test_the_engine_compiles_student_and_teacher_and_its_steps_match_eager(distill_world):
    """Inductor for real: the affine world's fields compile in seconds. Same seeds, same losses."""
    eager = Engine(loads_graph(engine_graph("off")), write=False, show_progress=False)
    compiled = Engine(loads_graph(engine_graph("default")), write=False, show_progress=False)
    assert isinstance(compiled.session.student._compiled_call_impl, CompiledForward)
    assert isinstance(compiled.session.ctx.field("teacher")._compiled_call_impl, CompiledForward)
    assert eager.session.student._compiled_call_impl is None
    for _ in range(3):
        a, b = eager.update(), compiled.update()
        assert b.loss == pytest.approx(a.loss, rel=1e-5, abs=1e-7)
    assert compiled.session.inference_model()._compiled_call_impl is None  # exported and evaluated eager


def test_importing_fieldkit_and_its_engine_does_not_import_dynamo():
    """torch._dynamo / inductor cost seconds to import: only compiling loads them."""
    import subprocess
    import sys

    code = "import sys, fieldkit.distill.engine; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
