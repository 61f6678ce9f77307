"""fieldkit.models.MMDiT: shapes, zero init, conditioning that matters, checkpoints, and that it learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from fieldkit.attention import available_backends, use_backend
from fieldkit.cond import Cond
from fieldkit.distill.student import make_student
from fieldkit.errors import CheckpointError, FieldkitError, GraphError
from fieldkit.field import ModuleField, VelocityField
from fieldkit.graph.schema import StudentSpec
from fieldkit.models import MMDiT, MMDiTConfig

TINY = {"hidden": 32, "depth": 2, "heads": 2, "text_dim": 24, "pooled_dim": 12, "frequency_dim": 32}
B, T = 4, 6


def _model(seed: int = 0, perturb: bool = True, **overrides: object) -> MMDiT:
    """A tiny model; ``perturb`` moves every weight off its init so no path is gated shut."""
    torch.manual_seed(seed)
    model = MMDiT(MMDiTConfig(**{**TINY, **overrides}))
    if perturb:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def _inputs(seed: int = 0, *, source: bool = False) -> tuple[torch.Tensor, torch.Tensor, Cond]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 1, 8, 16, generator=gen)
    sigma = torch.rand(B, generator=gen)
    lengths = torch.tensor([T, 3, 1, 4])
    tensors = {
        "text": torch.randn(B, T, TINY["text_dim"], generator=gen),
        "text_mask": torch.arange(T) < lengths[:, None],
        "pooled": torch.randn(B, TINY["pooled_dim"], generator=gen),
    }
    if source:
        tensors["source"] = torch.randn(B, 1, 8, 16, generator=gen)
    return x, sigma, Cond(tensors)


def test_default_config_is_a_small_velocity_field() -> None:
    model = MMDiT()
    assert isinstance(model, ModuleField) and isinstance(model, VelocityField)
    assert 0.5e6 <= sum(p.numel() for p in model.parameters()) <= 1.5e6
    cond = Cond(
        text=torch.randn(2, 5, 384), text_mask=torch.ones(2, 5, dtype=torch.bool), pooled=torch.randn(2, 384)
    )
    assert model(torch.randn(2, 1, 8, 16), torch.rand(2), cond).shape == (2, 1, 8, 16)


@pytest.mark.parametrize("overrides", [{}, {"patch_size": 1}, {"patch_size": 4, "in_channels": 3}])
def test_output_has_the_shape_of_x(overrides: dict) -> None:
    model = _model(**overrides)
    c = model.config.in_channels
    x = torch.randn(3, c, 8, 16)
    v = model(x, torch.rand(3), Cond(text=torch.randn(3, 2, 24)))
    assert v.shape == x.shape
    assert model(x, torch.tensor(0.5), Cond()).shape == x.shape  # scalar sigma, no conditions at all


def test_untrained_model_is_exactly_the_zero_field() -> None:
    x, sigma, cond = _inputs()
    assert torch.equal(_model(perturb=False)(x, sigma, cond), torch.zeros_like(x))
    assert _model(perturb=True)(x, sigma, cond).abs().min() > 0


def test_masked_text_tokens_are_ignored_and_unmasked_ones_are_not() -> None:
    model, (x, sigma, cond) = _model(), _inputs()
    base = model(x, sigma, cond)
    text = cond["text"].clone()
    text[1, 3:] = torch.randn(T - 3, TINY["text_dim"]) * 5  # sample 1 keeps 3 tokens
    torch.testing.assert_close(model(x, sigma, cond.replace(text=text)), base, atol=1e-6, rtol=0)
    # The same change is visible when the mask does not hide it, so the mask is what ignores it.
    unmasked = cond.without("text_mask")
    assert (model(x, sigma, unmasked.replace(text=text)) - model(x, sigma, unmasked))[1].abs().max() > 1e-3
    text = cond["text"].clone()
    text[1, 2] += 1.0  # an attended token
    changed = model(x, sigma, cond.replace(text=text)) - base
    assert changed[1].abs().max() > 1e-3
    assert torch.equal(changed[[0, 2, 3]], torch.zeros_like(changed[[0, 2, 3]]))  # samples stay apart


def test_sigma_and_pooled_change_the_velocity() -> None:
    model, (x, sigma, cond) = _model(), _inputs()
    base = model(x, sigma, cond)
    assert (model(x, sigma.flip(0), cond) - base).abs().max() > 1e-3
    assert (model(x, sigma, cond.replace(pooled=cond["pooled"] + 1)) - base).abs().max() > 1e-3


def test_source_conditioning_matters_and_is_required() -> None:
    model = _model(use_source=True)
    x, sigma, cond = _inputs(source=True)
    base = model(x, sigma, cond)
    other = cond.replace(source=torch.randn_like(cond["source"]))
    assert (model(x, sigma, other) - base).abs().max() > 1e-3
    with pytest.raises(FieldkitError, match="'source'"):
        model(x, sigma, cond.without("source"))
    with pytest.raises(FieldkitError, match="shape of x"):
        model(x, sigma, cond.replace(source=torch.randn(B, 1, 8, 8)))


def test_wrong_canvas_shape_is_a_clear_error() -> None:
    with pytest.raises(FieldkitError, match=r"expects x of shape \[B, 1, 8, 16\]"):
        _model()(torch.randn(2, 1, 16, 16), torch.rand(2), Cond())


def test_config_rejects_inconsistent_shapes() -> None:
    with pytest.raises(ValidationError, match="multiple of patch_size"):
        MMDiTConfig(patch_size=3)
    with pytest.raises(ValidationError, match="multiple of heads"):
        MMDiTConfig(hidden=96, heads=5)
    with pytest.raises(ValidationError, match="extra"):
        MMDiTConfig(hiden=64)


def test_one_backward_reaches_every_parameter() -> None:
    model, (x, sigma, cond) = _model(), _inputs()
    model(x, sigma, cond).square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead


@pytest.mark.parametrize("name", available_backends("cpu", torch.float32, masked=True))
def test_every_available_backend_gives_the_same_velocity(name: str) -> None:
    model, (x, sigma, cond) = _model(), _inputs()
    with use_backend("naive"):
        want = model(x, sigma, cond)
    with use_backend(name):
        got = model(x, sigma, cond)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_save_and_load_round_trip_exactly(tmp_path: Path) -> None:
    model, (x, sigma, cond) = _model(use_source=True), _inputs(source=True)
    folder = model.save_pretrained(tmp_path / "student")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]  # no temporary folder left
    loaded = MMDiT.from_pretrained(folder)
    assert loaded.config == model.config
    assert torch.equal(loaded(x, sigma, cond), model(x, sigma, cond))
    double = MMDiT.from_pretrained(folder, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in double.parameters())
    torch.testing.assert_close(
        double(x.double(), sigma, cond.to(dtype=torch.float64)).float(), model(x, sigma, cond)
    )


def test_saving_over_a_folder_replaces_the_model_and_keeps_other_files(tmp_path: Path) -> None:
    folder = tmp_path / "student"
    _model(seed=0).save_pretrained(folder)
    (folder / "notes.txt").write_text("keep me")
    second = _model(seed=1, depth=3)
    second.save_pretrained(folder)
    assert (folder / "notes.txt").read_text() == "keep me"
    x, sigma, cond = _inputs()
    assert torch.equal(MMDiT.from_pretrained(folder)(x, sigma, cond), second(x, sigma, cond))


def test_a_failed_save_leaves_the_existing_folder_untouched(tmp_path: Path) -> None:
    folder = _model(seed=0).save_pretrained(tmp_path / "student")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    broken = _model(seed=1)
    broken.blocks[0].image.proj.weight = broken.blocks[1].image.proj.weight  # shared memory: unsavable
    with pytest.raises(RuntimeError):
        broken.save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


def _break(folder: Path, how: str) -> None:
    weights, config = folder / "model.safetensors", folder / "config.json"
    if how == "no config":
        config.unlink()
    elif how == "no weights":
        weights.unlink()
    elif how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif how == "garbage weights":
        weights.write_bytes(b"not a safetensors file")
    elif how == "bad json":
        config.write_text("{not json")
    elif how == "invalid config":
        config.write_text(json.dumps({**json.loads(config.read_text()), "heads": 0}))
    elif how == "another model":
        config.write_text(json.dumps({**json.loads(config.read_text()), "_class_name": "UNet"}))
    elif how == "mismatched weights":
        config.write_text(json.dumps({**json.loads(config.read_text()), "hidden": 64}))
    elif how == "missing tensors":
        config.write_text(json.dumps({**json.loads(config.read_text()), "depth": 3}))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("no config", "config.json is missing"),
        ("no weights", "model.safetensors is missing"),
        ("truncated weights", "not a readable safetensors"),
        ("garbage weights", "not a readable safetensors"),
        ("bad json", "not readable JSON"),
        ("invalid config", "not a valid MMDiTConfig"),
        ("another model", "'UNet' model, not a 'MMDiT'"),
        ("mismatched weights", r"does not match its config.json: wrong shape"),
        ("missing tensors", r"does not match its config.json: missing \(\d+\): blocks\.1\.text\.mlp"),
    ],
)
def test_broken_checkpoints_raise_checkpoint_error(tmp_path: Path, how: str, message: str) -> None:
    folder = _model().save_pretrained(tmp_path / "student")
    _break(folder, how)
    with pytest.raises(CheckpointError, match=message):
        MMDiT.from_pretrained(folder)


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        ({"hidden": "abc"}, "hidden: Input should be a valid integer"),
        ({"patch_size": 0}, "patch_size: Input should be greater than or equal to 1 (got 0)"),
        ({"bogus": 1}, "bogus: Extra inputs are not permitted"),
        ({"heads": 3}, "must be a multiple of heads 3"),
    ],
)
def test_an_invalid_config_value_is_one_line_naming_the_file_and_key(
    tmp_path: Path, edit: dict[str, object], says: str
) -> None:
    folder = _model().save_pretrained(tmp_path / "student")
    config = folder / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **edit}))
    with pytest.raises(CheckpointError) as err:
        MMDiT.from_pretrained(folder)
    assert err.value.message.startswith(f"{config} is not a valid MMDiTConfig: ")
    assert says in err.value.message and "\n" not in err.value.message and "http" not in err.value.message
    assert err.value.hint and "config.json" in err.value.hint


def test_missing_folder_and_file_target_raise_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no model folder"):
        MMDiT.from_pretrained(tmp_path / "absent")
    target = tmp_path / "a_file"
    target.write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        _model().save_pretrained(target)
    assert target.read_text() == "x"


def test_a_few_hundred_steps_fit_a_fixed_batch() -> None:
    """Flow matching on 8 fixed canvases: the velocity MSE on held-out (eps, sigma) draws drops a lot."""
    torch.manual_seed(0)
    model = MMDiT(MMDiTConfig(**{**TINY, "hidden": 48}))
    x0 = (torch.rand(8, 1, 8, 16) > 0.7).float() * 2 - 1  # sparse strokes in [-1, 1]
    cond = Cond(text=torch.randn(8, 3, 24), pooled=torch.randn(8, 12))
    gen = torch.Generator().manual_seed(1)
    held_out = [(torch.randn(x0.shape, generator=gen), torch.rand(8, generator=gen)) for _ in range(4)]

    def loss_of(eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma[:, None, None, None]
        return (model((1 - s) * x0 + s * eps, sigma, cond) - (eps - x0)).square().mean()

    def held_out_loss() -> float:
        with torch.no_grad():
            return sum(loss_of(e, s).item() for e, s in held_out) / len(held_out)

    before = held_out_loss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(400):
        opt.zero_grad()
        loss_of(torch.randn_like(x0), torch.rand(8)).backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.35 * before, (before, after)


def _saved_tensors_and_grads(model: MMDiT) -> tuple[int, torch.Tensor, dict[str, torch.Tensor]]:
    """How many tensors autograd keeps for the backward pass, the loss, and every parameter's gradient."""
    saved = 0

    def count(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += 1
        return t

    x, sigma, cond = _inputs(3)
    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        loss = model(x, sigma, cond).square().mean()
    loss.backward()
    return saved, loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("train", ["full", "lora"])
def test_gradient_checkpointing_keeps_loss_and_grads_and_saves_fewer_activations(train: str) -> None:
    model = _model(depth=3)
    torch.manual_seed(0)  # LoRA adapters are initialised from the global RNG: the same in both students
    plain = make_student(model, StudentSpec(init="m", train=train))
    torch.manual_seed(0)
    checkpointed = make_student(model, StudentSpec(init="m", train=train, gradient_checkpointing=True))
    assert checkpointed.gradient_checkpointing and not plain.gradient_checkpointing
    saved_plain, loss_plain, grads_plain = _saved_tensors_and_grads(plain)
    saved_ckpt, loss_ckpt, grads_ckpt = _saved_tensors_and_grads(checkpointed)
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=0, atol=0)
    assert grads_ckpt.keys() == grads_plain.keys() and grads_plain
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-7)
    # Each block keeps only its inputs; its inner activations are recomputed in the backward pass.
    assert saved_ckpt < saved_plain / 2


def test_gradient_checkpointing_on_a_model_without_it_is_a_clear_error() -> None:
    class Plain(ModuleField):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x, sigma, cond):
            return self.w * x

    with pytest.raises(GraphError, match="has no enable_gradient_checkpointing"):
        make_student(Plain(), StudentSpec(init="plain", gradient_checkpointing=True))
