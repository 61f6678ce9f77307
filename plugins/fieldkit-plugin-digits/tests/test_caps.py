"""Many teachers (issue 21): the capability partitions, their generated LoRA recipes and student graphs, and
the graphs' LoRA teachers over one shared base."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml
from click.testing import CliRunner
from fieldkit_digits.buckets import GlobalEditBucket, LocalEditBucket
from fieldkit_digits.capabilities import CELLS, PARTITIONS, Capability, capabilities
from fieldkit_digits.params import GlobalEditParams, LocalEditParams
from fieldkit_digits.world import GLOBAL_OPS, LOCAL_OPS, SIDES
from test_reproduce import load_script

from fieldkit import load_graph
from fieldkit.cli import cli
from fieldkit.graph import BuildContext
from fieldkit.models import load_pretrained
from fieldkit.models.lora import lora_tensors, save_lora, tuner_layers
from fieldkit.testing import assert_shares_weights, random_lora_student

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "digits"


@pytest.fixture(scope="module")
def caps() -> ModuleType:
    return load_script(EXAMPLES / "teachers" / "caps.py", "digits_caps")


def test_each_partition_covers_every_edit_once_and_refines_the_one_before() -> None:
    assert sorted(PARTITIONS) == [2, 4, 8]
    for n, part in PARTITIONS.items():
        assert len(part) == n
        assert sum(len(c.cells()) for c in part) == len(CELLS)  # pairwise disjoint ...
        assert frozenset().union(*(c.cells() for c in part)) == CELLS  # ... and covering
    for coarse, fine in ((2, 4), (4, 8)):
        for cap in PARTITIONS[fine]:
            assert sum(cap.cells() <= parent.cells() for parent in PARTITIONS[coarse]) == 1
    shared = [c for c in PARTITIONS[4] if c in PARTITIONS[8]]
    assert [c.name for c in shared] == ["global_tone", "global_shape"]  # one recipe and LoRA each
    assert len(capabilities()) == len({c.cells() for part in PARTITIONS.values() for c in part}) == 12


def _bucket(cap: Capability) -> LocalEditBucket | GlobalEditBucket:
    spec = cap.data(split="train")
    kind = spec.pop("type")
    if kind == "digits.local_edit":
        return LocalEditBucket(LocalEditParams.model_validate(spec))
    return GlobalEditBucket(GlobalEditParams.model_validate(spec))


def test_the_digits_page_holds_the_trained_loras_scores_from_their_model_cards(caps: ModuleType) -> None:
    """docs/digits.md's capability table is what ``caps.py --table`` prints from the committed cards, and
    each row's figures are the card's own (the card of ``global_tone`` read by hand)."""
    table = caps.table()
    page = (EXAMPLES.parents[1] / "docs" / "digits.md").read_text()
    assert f"<!-- generated: python examples/digits/teachers/caps.py --table -->\n{table}\n" in page
    assert len(table.splitlines()) == 2 + len(capabilities())
    card = (EXAMPLES / "teachers" / "caps" / "global_tone" / "README.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| `global_tone` |"))
    for metric in ("score", "success"):
        value = next(line for line in card.splitlines() if line.startswith(f"| global_tone: {metric} "))
        assert f"| {value.split('|')[2].strip()} |" in row
    assert "| 4, 8 | bold, invert |" in row


def test_the_table_names_the_training_command_for_a_missing_lora(
    caps: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(caps, "HERE", tmp_path)
    with pytest.raises(SystemExit, match=r"train_caps\.sh local"):
        caps.table()


@pytest.mark.parametrize("name", sorted(capabilities()))
def test_a_capability_bucket_draws_exactly_its_edits(name: str) -> None:
    cap = capabilities()[name]
    batch = _bucket(cap).sample(256, torch.Generator().manual_seed(0))
    ops = LOCAL_OPS if cap.kind == "local" else GLOBAL_OPS
    cells = {
        (ops[int(o)], SIDES[int(s)] if s >= 0 else None)
        for o, s in zip(batch.cond["op"], batch.cond["side"], strict=True)
    }
    assert cells == cap.cells()


def test_generation_is_deterministic_and_the_committed_files_are_its_output(caps: ModuleType) -> None:
    files = caps.files()
    assert files == caps.files()
    for path, text in files.items():
        assert (EXAMPLES / path).read_text() == text, f"{path} is stale: run examples/digits/teachers/caps.py"
    recipes = {p.stem for p in (EXAMPLES / "teachers" / "caps").glob("*.yaml")}
    assert recipes == set(capabilities())
    assert {p.name for p in (EXAMPLES / "reproduce").glob("caps*.yaml")} == {
        f"caps{n}.yaml" for n in PARTITIONS
    }


@pytest.mark.parametrize("name", sorted(capabilities()))
def test_a_recipe_trains_a_rank_8_lora_of_the_base_on_its_own_edits_only(name: str) -> None:
    path = EXAMPLES / "teachers" / "caps" / f"{name}.yaml"
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    recipe = yaml.safe_load(path.read_text())
    assert recipe["routes"] == {
        name: {
            "data": capabilities()[name].data(split="train", drop=0.1),
            "metrics": [{"type": "digits.edit", "per_op": True}],
        }
    }
    assert recipe["student"]["train"] == "lora" and recipe["student"]["lora"]["rank"] == 8
    assert recipe["fields"]["base"]["path"] == "../t2i"


@pytest.mark.parametrize("n", sorted(PARTITIONS))
def test_a_student_graph_routes_each_capability_to_its_lora_teacher(n: int) -> None:
    graph = yaml.safe_load((EXAMPLES / "reproduce" / f"caps{n}.yaml").read_text())
    names = [c.name for c in PARTITIONS[n]]
    assert list(graph["routes"]) == ["t2i", *names]
    assert graph["routes"]["t2i"]["field"] == "t2i"
    for cap in PARTITIONS[n]:
        route, field = graph["routes"][cap.name], graph["fields"][cap.name]
        assert route["field"] == cap.name and route["data"] == cap.data(split="train")
        assert field["type"] == "fieldkit.lora" and field["base"] == "t2i"
        assert field["path"] == f"../teachers/caps/{cap.name}"
        assert "/" not in field["missing"]  # examples/digits/reproduce.py takes a value with "/" for a path
    assert graph["fields"]["merged"] == {"type": "merge", "fields": names}
    assert graph["student"]["init"] == "t2i"


def _module(ctx: BuildContext, name: str) -> torch.nn.Module:
    field = ctx.field(name)
    assert isinstance(field, torch.nn.Module)
    return field


def _world(root: Path) -> Path:
    """A copy of the base teacher and the student graphs under ``root`` (no LoRA yet)."""
    shutil.copytree(EXAMPLES / "teachers" / "t2i", root / "teachers" / "t2i")
    shutil.copytree(EXAMPLES / "reproduce", root / "reproduce", ignore=shutil.ignore_patterns("[!c]*"))
    return root


def test_without_the_loras_the_graph_says_to_run_the_training_script(tmp_path: Path) -> None:
    """validate lists every missing LoRA; a dry run (which builds, so stops at the first) names that one."""
    path = str(_world(tmp_path) / "reproduce" / "caps4.yaml")
    result = CliRunner().invoke(cli, ["validate", path])
    assert result.exit_code != 0
    for cap in PARTITIONS[4]:
        assert f"train it: train_caps.sh {cap.name}, in the teachers folder" in result.output
    result = CliRunner().invoke(cli, ["distill", path, "--dry-run", "--no-progress"])
    assert result.exit_code != 0
    assert "hint: train it: train_caps.sh local_left, in the teachers folder" in result.output


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The graphs' world with a random rank-2 LoRA of the base per capability (stand-ins for trained ones)."""
    root = _world(tmp_path_factory.mktemp("caps"))
    base = load_graph(root / "reproduce" / "caps2.yaml")
    t2i = BuildContext(base).field("t2i")
    for seed, name in enumerate(capabilities()):
        student = random_lora_student(t2i, rank=2, alpha=2, seed=seed)
        save_lora(
            root / "teachers" / "caps" / name, lora_tensors(dict(student.named_parameters())), diffusers=False
        )
    yield root


@pytest.mark.parametrize("n", sorted(PARTITIONS))
def test_every_route_teacher_is_a_lora_over_one_base_in_memory(tiny_world: Path, n: int) -> None:
    path = tiny_world / "reproduce" / f"caps{n}.yaml"
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    graph = load_graph(path)
    ctx = BuildContext(graph)
    base = _module(ctx, "t2i")
    storage = {p.data_ptr() for p in base.parameters()}
    teachers = [_module(ctx, str(graph.spec.routes[c.name].field)) for c in PARTITIONS[n]]
    for teacher in teachers:
        assert tuner_layers(teacher)
        assert {p.data_ptr() for name, p in teacher.named_parameters() if "lora_" not in name} == storage
    assert_shares_weights([base, *teachers])
    merged = _module(ctx, "merged")  # the weight-merge baseline: a plain model, base + mean of the deltas
    assert not tuner_layers(merged)
    assert {p.data_ptr() for p in merged.parameters()}.isdisjoint(storage)


def test_the_biggest_graph_dry_runs_with_its_loras(tiny_world: Path) -> None:
    args = ["distill", str(tiny_world / "reproduce" / "caps8.yaml"), "--dry-run", "--no-progress"]
    result = CliRunner().invoke(cli, [*args, "--set", "run.batch_size=2", "--set", "run.eval_samples=4"])
    assert result.exit_code == 0, result.output


def test_a_capability_trains_exports_and_loads_as_a_teacher(tmp_path: Path) -> None:
    """train_caps.sh's two commands on one recipe (two steps), then the exported LoRA as a graph's teacher."""
    root = _world(tmp_path)
    (root / "teachers" / "caps").mkdir()
    shutil.copy(EXAMPLES / "teachers" / "caps" / "replace_left.yaml", root / "teachers" / "caps")
    run, lora = tmp_path / "run", root / "teachers" / "caps" / "replace_left"
    args = [
        "train",
        str(root / "teachers" / "caps" / "replace_left.yaml"),
        "--out",
        str(run),
        "--no-progress",
    ]
    result = CliRunner().invoke(cli, [*args, "--set", "run.steps=2", "--set", "run.eval_samples=8"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["export", str(run), "--format", "peft", "-o", str(lora)])
    assert result.exit_code == 0, result.output
    graph = root / "reproduce" / "one.yaml"
    graph.write_text(
        "fields:\n  t2i: {type: fieldkit.checkpoint, path: ../teachers/t2i, dtype: float32}\n"
        "  replace_left: {type: fieldkit.lora, base: t2i, path: ../teachers/caps/replace_left}\n"
    )
    ctx = BuildContext(load_graph(graph))
    teacher = _module(ctx, "replace_left")
    names = {n for n, _ in teacher.named_parameters() if "lora_" in n}
    assert any(n.startswith("patch_embed.lora_") for n in names)  # the recipe's targets, the conv included
    merged = load_pretrained(run / "student")  # the run's student: the same LoRA merged into the base
    x, sigma = torch.randn(2, 1, 8, 16), torch.full((2,), 0.5)
    cond = _bucket(capabilities()["replace_left"]).sample(2, torch.Generator().manual_seed(0)).cond
    with torch.no_grad():
        torch.testing.assert_close(teacher(x, sigma, cond), merged(x, sigma, cond), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(teacher(x, sigma, cond), ctx.field("t2i")(x, sigma, cond))
        # train_caps.sh's third command stores the adapter in float16: half the bytes, the same teacher up
        # to float16 rounding of the LoRA weights (a fresh build reads the new file)
        script = load_script(EXAMPLES / "teachers" / "caps.py", "digits_caps")
        before = (lora / "adapter_model.safetensors").stat().st_size
        script.half(lora)
        assert (lora / "adapter_model.safetensors").stat().st_size < 0.55 * before
        half = _module(BuildContext(load_graph(graph)), "replace_left")
        assert all(p.dtype == torch.float32 for p in half.parameters())
        torch.testing.assert_close(half(x, sigma, cond), teacher(x, sigma, cond), atol=2e-3, rtol=2e-3)
