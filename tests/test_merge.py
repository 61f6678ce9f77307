"""Weight merging: the function, the `merge` source type and the `fieldkit merge` command."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from fieldkit import loads_graph
from fieldkit.cli import cli
from fieldkit.errors import FieldkitError
from fieldkit.graph.builder import BuildContext
from fieldkit.merge import merge_models, merge_state_dicts, merge_weights
from fieldkit.models import MMDiT, MMDiTConfig, load_pretrained

CONFIG = MMDiTConfig(sample_size=(4, 4), patch_size=2, hidden=16, depth=1, heads=2, text_dim=8, pooled_dim=8)


def random_model(seed: int, config: MMDiTConfig = CONFIG) -> MMDiT:
    torch.manual_seed(seed)
    model = MMDiT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def test_merge_is_the_weighted_average_of_every_floating_tensor() -> None:
    a, b = random_model(0), random_model(1)
    merged = merge_models([a, b], [3.0, 1.0])
    for name, value in merged.state_dict().items():
        expected = 0.75 * a.state_dict()[name] + 0.25 * b.state_dict()[name]
        torch.testing.assert_close(value, expected)
    assert merged is not a and merged is not b


def test_merging_copies_of_one_model_gives_that_model() -> None:
    a = random_model(0)
    merged = merge_models([a, a, a])
    x, sigma = torch.randn(2, 1, 4, 4), torch.full((2,), 0.3)
    from fieldkit import Cond

    cond = Cond(pooled=torch.randn(2, 8))
    torch.testing.assert_close(
        merged(x, sigma, cond), a(x, sigma, cond), rtol=1e-4, atol=1e-4
    )  # 3 x 1/3 rounding


def test_non_floating_tensors_come_from_the_first_model() -> None:
    states = [{"w": torch.ones(2), "n": torch.tensor([1])}, {"w": torch.zeros(2), "n": torch.tensor([7])}]
    merged = merge_state_dicts(states)
    assert merged["n"].item() == 1
    torch.testing.assert_close(merged["w"], torch.full((2,), 0.5))


def test_negative_weights_are_task_arithmetic() -> None:
    a, b, base = random_model(0), random_model(1), random_model(2)
    merged = merge_models([a, b, base], [1.0, 1.0, -1.0])
    for name, value in merged.state_dict().items():
        sa, sb, s0 = (m.state_dict()[name] for m in (a, b, base))
        torch.testing.assert_close(value, s0 + (sa - s0) + (sb - s0))


@pytest.mark.parametrize("weights", [[1.0, 1.0, -1.0], [2.0, 0.5, -0.5], [0.2, 0.3, 0.5]])
def test_weights_are_divided_by_their_sum(weights: list[float]) -> None:
    normalised = merge_weights(weights, 3)
    assert sum(normalised) == pytest.approx(1.0)
    ratios = [n / w for n, w in zip(normalised, weights, strict=True)]
    assert ratios == pytest.approx([1 / sum(weights)] * 3)


@pytest.mark.parametrize(
    ("weights", "count", "message"),
    [
        ([1.0], 2, "2 models to merge but 1 weights"),
        ([-2.0, 1.0], 2, "positive sum"),
        ([1.0, -1.0], 2, "positive sum"),
        ([0.0, 0.0], 2, "positive sum"),
        ([float("inf"), 1.0], 2, "finite"),
        ([float("nan"), 1.0], 2, "finite"),
    ],
)
def test_bad_weights_are_refused(weights: list[float], count: int, message: str) -> None:
    with pytest.raises(FieldkitError, match=message):
        merge_weights(weights, count)


def test_models_of_other_shapes_are_refused() -> None:
    bigger = MMDiTConfig(
        sample_size=(4, 4), patch_size=2, hidden=32, depth=1, heads=2, text_dim=8, pooled_dim=8
    )
    with pytest.raises(FieldkitError, match="shape"):
        merge_models([random_model(0), random_model(1, bigger)])


def test_merge_source_in_a_graph(tmp_path) -> None:
    random_model(0).save_pretrained(tmp_path / "a")
    random_model(1).save_pretrained(tmp_path / "b")
    graph = loads_graph(
        f"""
fields:
  a: {{type: fieldkit.checkpoint, path: {tmp_path / "a"}}}
  b: {{type: fieldkit.checkpoint, path: {tmp_path / "b"}}}
  ab: {{type: merge, fields: [a, b], weights: [1, 1]}}
"""
    )
    ctx = BuildContext(graph)
    merged = ctx.field("ab")
    a, b = ctx.field("a"), ctx.field("b")
    name = "proj_out.weight"
    torch.testing.assert_close(merged.state_dict()[name], (a.state_dict()[name] + b.state_dict()[name]) / 2)
    assert not any(p.requires_grad for p in merged.parameters())


def test_task_arithmetic_in_a_graph(tmp_path) -> None:
    for i, name in enumerate(("a", "b", "base")):
        random_model(i).save_pretrained(tmp_path / name)
    graph = loads_graph(
        f"""
fields:
  a: {{type: fieldkit.checkpoint, path: {tmp_path / "a"}}}
  b: {{type: fieldkit.checkpoint, path: {tmp_path / "b"}}}
  base: {{type: fieldkit.checkpoint, path: {tmp_path / "base"}}}
  arith: {{type: merge, fields: [a, b, base], weights: [1, 1, -1]}}
"""
    )
    ctx = BuildContext(graph)
    name = "proj_out.weight"
    a, b, base = (ctx.field(n).state_dict()[name] for n in ("a", "b", "base"))
    torch.testing.assert_close(ctx.field("arith").state_dict()[name], a + b - base)


def merge_args(tmp_path, *weights: str) -> list[str]:
    """``fieldkit merge a b -w .. -o ab`` over two random model folders saved under ``tmp_path``."""
    random_model(0).save_pretrained(tmp_path / "a")
    random_model(1).save_pretrained(tmp_path / "b")
    flags = [arg for w in weights for arg in ("-w", w)]
    return ["merge", str(tmp_path / "a"), str(tmp_path / "b"), *flags, "-o", str(tmp_path / "ab")]


def test_merge_command_refuses_weights_without_a_positive_sum(tmp_path) -> None:
    out = tmp_path / "ab"
    result = CliRunner().invoke(cli, merge_args(tmp_path, "1", "-1"))
    assert result.exit_code == 2, result.output
    assert "positive sum" in result.output
    assert not out.exists()


def test_merge_command_writes_a_loadable_folder_and_never_overwrites(tmp_path) -> None:
    out = tmp_path / "ab"
    args = merge_args(tmp_path, "1", "3")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    merged = load_pretrained(out)
    a, b = load_pretrained(tmp_path / "a"), load_pretrained(tmp_path / "b")
    torch.testing.assert_close(
        merged.state_dict()["proj_out.weight"],
        0.25 * a.state_dict()["proj_out.weight"] + 0.75 * b.state_dict()["proj_out.weight"],
    )
    before = (out / "model.safetensors").read_bytes()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2
    assert "already exists" in again.output
    assert (out / "model.safetensors").read_bytes() == before
