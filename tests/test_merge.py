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


def test_weights_near_the_float_limit_are_the_average_they_mean() -> None:
    assert merge_weights([1e308, 1e308], 2) == [0.5, 0.5]
    assert merge_weights([1e308, 1e308, -1e308], 3) == [1.0, 1.0, -1.0]
    with pytest.raises(FieldkitError, match=r"got \[-1e\+308, -1e\+308\]"):  # the weights as given
        merge_weights([-1e308, -1e308], 2)


def test_non_finite_values_in_a_model_or_the_merge_are_refused() -> None:
    good = {"w": torch.ones(2)}
    with pytest.raises(FieldkitError, match="model 1 holds NaN or infinite values at w"):
        merge_state_dicts([good, {"w": torch.tensor([1.0, float("nan")])}])
    with pytest.raises(FieldkitError, match="model 0 holds NaN or infinite values at w"):
        merge_state_dicts([{"w": torch.tensor([float("inf"), 1.0])}, good])
    big, zero = ({"w": torch.full((2,), v, dtype=torch.float16)} for v in (60000.0, 0.0))
    with pytest.raises(FieldkitError, match=r"the merge overflows torch\.float16 at w"):
        merge_state_dicts([big, zero], [2.0, -1.0])  # 120000 is past float16's largest, 65504


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


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (("nan", "1"), "must be finite numbers, got [nan, 1.0]"),
        (("-1e308", "-1e308"), "got [-1e+308, -1e+308]"),
    ],
)
def test_merge_command_names_the_weights_it_was_given(tmp_path, weights, message) -> None:
    result = CliRunner().invoke(cli, merge_args(tmp_path, *weights))
    assert result.exit_code == 2, result.output
    assert message in result.output and "hint:" in result.output
    assert not (tmp_path / "ab").exists()


def test_merge_command_averages_weights_near_the_float_limit(tmp_path) -> None:
    result = CliRunner().invoke(cli, merge_args(tmp_path, "1e308", "1e308"))
    assert result.exit_code == 0, result.output
    assert "0.5 x" in result.output
    merged, a, b = (load_pretrained(tmp_path / n).state_dict()["proj_out.weight"] for n in ("ab", "a", "b"))
    torch.testing.assert_close(merged, (a + b) / 2)


def test_merge_command_refuses_an_output_inside_a_model_it_reads(tmp_path) -> None:
    args = merge_args(tmp_path)
    args[-1] = str(tmp_path / "a" / "merged")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "is inside" in result.output and "nothing was written" in result.output
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["config.json", "model.safetensors"]


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
