"""The commands that run things — distill, train, sample, eval — on the closed-form quickstart world."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from PIL import Image

from fieldkit.cli import cli

MODEL = "{in_channels: 1, sample_size: [4, 4], patch_size: 2, hidden: 16, depth: 1, heads: 2, num_classes: 3}"
WORLD = "{type: gaussian_mixture, classes: 3, shape: [1, 4, 4], std: 0.2}"

DISTILL = f"""\
fields:
  mixture: {WORLD}
  guided: {{type: guidance, field: mixture, w: 2.0}}
  init: {{type: fieldkit.mmdit, config: {MODEL}}}
routes:
  t2i: {{field: guided, data: {WORLD}, metrics: [{WORLD}]}}
student: {{init: init}}
flow: {{steps: 4}}
run: {{steps: 4, batch_size: 4, lr: 1.0e-3, log_every: 1, checkpoint_every: 2, eval_samples: 8, device: cpu}}
"""

TRAIN = DISTILL.replace("student: {init: init}", "student: {init: init}\nmethod: {type: sft}")


def invoke(*args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args), prog_name="fieldkit")


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    path = tmp_path / "graph.yaml"
    path.write_text(DISTILL)
    return path


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_distill_writes_metrics_samples_checkpoints_student_and_results(graph: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke("distill", str(graph), "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 5))
    assert {"loss", "loss/t2i", "grad_norm", "lr", "rollout_nfe", "time/rollout", "time/teacher"} <= set(
        lines[0]
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert (out / "student" / "model.safetensors").is_file()
    grid = Image.open(out / "samples" / "step-00000004-t2i.png")
    assert grid.width > grid.height  # rows: the route's field and the student
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["field"] for r in rows} == {"guided", "student"}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)


def test_distill_refuses_a_folder_that_holds_a_run_and_leaves_it_untouched(
    graph: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert invoke("distill", str(graph), "--out", str(out), "--no-progress").exit_code == 0
    before = files_under(out)
    again = invoke("distill", str(graph), "--out", str(out), "--no-progress")
    assert again.exit_code == 2
    assert "already holds a run" in again.output and "--resume latest" in again.output
    assert "Traceback" not in again.output
    assert files_under(out) == before


def test_resume_latest_continues_to_the_new_step_count(graph: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert invoke("distill", str(graph), "--out", str(out), "--no-progress").exit_code == 0
    result = invoke(
        "distill",
        str(graph),
        "--out",
        str(out),
        "--resume",
        "latest",
        "--set",
        "run.steps=6",
        "--set",
        "run.lr=5e-4",
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
    # The run folder says what the resume changed: graph.json is the graph as it runs now, and every start
    # or resume is one line of sessions.jsonl with the overrides it applied.
    assert json.loads((out / "graph.json").read_text())["run"]["lr"] == 5e-4
    sessions = [json.loads(line) for line in (out / "sessions.jsonl").read_text().splitlines()]
    assert [(s["step"], s["steps"], s["overrides"]) for s in sessions] == [
        (0, 4, []),
        (4, 6, ["run.steps=6", "run.lr=5e-4"]),
    ]
    again = invoke("distill", str(graph), "--out", str(out), "--resume", "latest", "--set", "run.steps=6")
    assert again.exit_code == 0, again.output
    assert "nothing left to train: the run is at step 6 and run.steps is 6" in " ".join(again.output.split())


def test_resume_without_a_checkpoint_starts_afresh_with_a_note(graph: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    result = invoke("distill", str(graph), "--out", str(out), "--resume", "latest", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "no checkpoint to resume from: starting the run afresh" in " ".join(result.output.split())
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 5))


def test_dry_run_builds_and_times_one_update_and_writes_nothing(graph: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke("distill", str(graph), "--out", str(out), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run ok" in result.output and "Nothing written" in result.output
    assert not out.exists()


def test_train_needs_an_sft_recipe(graph: Path, tmp_path: Path) -> None:
    refused = invoke("train", str(graph), "--out", str(tmp_path / "t"))
    assert refused.exit_code == 2 and "method: {type: sft}" in refused.output
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TRAIN)
    result = invoke("train", str(recipe), "--out", str(tmp_path / "t"), "--no-progress")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "t" / "student" / "config.json").is_file()


def test_sample_and_eval_read_the_exported_student(graph: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert invoke("distill", str(graph), "--out", str(out), "--no-progress").exit_code == 0
    png = tmp_path / "grid.png"
    result = invoke(
        "sample",
        str(graph),
        "--field",
        "guided",
        "--checkpoint",
        str(out / "student"),
        "-n",
        "5",
        "-o",
        str(png),
    )
    assert result.exit_code == 0, result.output
    image = Image.open(png)
    assert image.width > image.height > 0
    labels = json.loads(png.with_suffix(".json").read_text())  # labelled as the run's own grids are
    assert labels["rows"] == ["guided", "run/student"]  # never "student", the run's own column in results
    assert len(labels["captions"]) == 5 and labels["captions"][0].startswith("component ")
    scored = invoke("eval", str(graph), "--checkpoint", str(out / "student"), "--samples", "8", "--json")
    assert scored.exit_code == 0, scored.output
    rows = json.loads(scored.output)["rows"]
    assert {r["route"] for r in rows} == {"t2i"} and len(rows) == 2


def test_sample_names_an_unknown_route_or_field(graph: Path, tmp_path: Path) -> None:
    result = invoke("sample", str(graph), "--route", "nope", "-o", str(tmp_path / "x.png"))
    assert result.exit_code == 2 and "t2i" in result.output
    result = invoke("sample", str(graph), "--field", "nope", "-o", str(tmp_path / "x.png"))
    assert result.exit_code == 2 and "known fields" in result.output
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("name", ["out.json", "model.safetensors", "grid.jpg", "grid.txt", "grid"])
def test_sample_writes_only_a_png_path(graph: Path, tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"mine")
    result = invoke("sample", str(graph), "--field", "guided", "-n", "2", "-o", str(tmp_path / name))
    assert result.exit_code == 2 and "must end in .png" in result.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == {
        "graph.yaml": graph.read_bytes(),
        name: b"mine",
    }


def test_sample_replaces_only_a_grid_it_wrote(graph: Path, quickstart_runs, tmp_path: Path) -> None:
    def sample(png: Path) -> click.testing.Result:
        return invoke("sample", str(graph), "--field", "guided", "-n", "2", "-o", str(png))

    folder = tmp_path / "model"
    shutil.copytree(quickstart_runs[0] / "student", folder)
    before = files_under(folder)
    result = sample(folder / "config.png")  # its labels would be the model's config.json
    assert result.exit_code == 2 and "config.json exists and is not the labels of a grid" in result.output
    assert files_under(folder) == before
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"a user's picture")
    result = sample(photo)  # no labels beside it: not a grid fieldkit wrote
    assert result.exit_code == 2 and "photo.png exists and is not a grid fieldkit wrote" in result.output
    assert photo.read_bytes() == b"a user's picture" and not photo.with_suffix(".json").exists()
    png = tmp_path / "grid.png"
    assert sample(png).exit_code == 0
    assert json.loads(png.with_suffix(".json").read_text())["format"] == "fieldkit.grid-labels/1"
    assert sample(png).exit_code == 0  # its own grid is replaced
    old = tmp_path / "old.png"  # labels written before they named their format
    old.write_bytes(png.read_bytes())
    old.with_suffix(".json").write_text(json.dumps({"rows": ["guided"], "captions": ["a", "b"]}))
    assert sample(old).exit_code == 0


def test_sample_says_what_a_checkpoint_that_is_no_model_folder_is(
    graph: Path, quickstart_runs, tmp_path: Path
) -> None:
    run = quickstart_runs[0]
    step = run / "checkpoints" / "step-00000004"
    result = invoke("sample", str(graph), "--checkpoint", str(step), "-o", str(tmp_path / "s.png"))
    assert result.exit_code == 2 and "a training checkpoint, not a model folder" in result.output
    assert f"fieldkitexport{run}--checkpoint{step}" in "".join(result.output.split())  # however wrapped
    assert "class None" not in result.output
    pipeline = tmp_path / "pipeline"
    (pipeline / "transformer").mkdir(parents=True)
    (pipeline / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    result = invoke("sample", str(graph), "--checkpoint", str(pipeline), "-o", str(tmp_path / "s.png"))
    assert result.exit_code == 2 and "a diffusers pipeline folder, not a model folder" in result.output
    assert str(pipeline / "transformer") in result.output
    assert not (tmp_path / "s.png").exists()


def test_a_bad_value_in_set_is_reported_before_anything_runs(graph: Path, tmp_path: Path) -> None:
    result = invoke("distill", str(graph), "--out", str(tmp_path / "run"), "--set", "run.lr=fast")
    assert result.exit_code == 2
    assert "run.lr" in result.output and "--set" in result.output
    assert not (tmp_path / "run").exists()


def test_the_python_api_distill_graph_matches_the_command(graph: Path, tmp_path: Path) -> None:
    import fieldkit

    result = fieldkit.distill_graph(graph, tmp_path / "api", overrides=("run.steps=2",), show_progress=False)
    assert result.step == 2 and result.out == tmp_path / "api"
    assert (tmp_path / "api" / "student" / "model.safetensors").is_file()
    assert {s.field for s in result.scores} == {"guided", "student"}


def save_model(folder: Path, seed: int = 0, value: float | None = None) -> Path:
    """A random MMDiT of the test world saved to ``folder`` (every weight ``value`` when given)."""
    import torch

    from fieldkit.models import MMDiT, MMDiTConfig

    torch.manual_seed(seed)
    model = MMDiT(
        MMDiTConfig(
            in_channels=1, sample_size=(4, 4), patch_size=2, hidden=16, depth=1, heads=2, num_classes=3
        )
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3) if value is None else p.fill_(value)
    model.save_pretrained(folder)
    return folder


def test_checkpoint_labels_are_unique_path_endings_and_never_a_field_name(tmp_path: Path) -> None:
    from fieldkit.commands.sources import checkpoint_labels

    def labels(*folders: str, fields: tuple[str, ...] = ("guided",)) -> list[str]:
        return checkpoint_labels([tmp_path / f for f in folders], fields)

    assert labels("a/model") == ["model"]
    assert labels("a/model", "b/model") == ["a/model", "b/model"]
    assert labels("x/a/model", "y/a/model", "z/b/model") == ["x/a/model", "y/a/model", "b/model"]
    assert labels("some/guided", "model") == ["some/guided", "model"]
    assert labels("run1/student") == ["run1/student"]
    assert labels("model", "model/model") == [f"{tmp_path.name}/model", "model/model"]


def test_eval_and_sample_give_every_checkpoint_its_own_column_and_row(graph: Path, tmp_path: Path) -> None:
    for i, folder in enumerate(("a/model", "b/model", "some/guided")):
        save_model(tmp_path / folder, seed=i)
    folders = [str(tmp_path / f) for f in ("a/model", "b/model", "some/guided")]
    checkpoints = [arg for f in folders for arg in ("--checkpoint", f)]
    scored = invoke("eval", str(graph), "--field", "guided", *checkpoints, "--samples", "8", "--json")
    assert scored.exit_code == 0, scored.output
    rows = json.loads(scored.output)["rows"]
    assert [r["field"] for r in rows] == ["guided", "a/model", "b/model", "some/guided"]
    assert rows[0]["accuracy"] == 1.0  # the teacher keeps its own scores under its own name
    assert rows[1]["spread"] != rows[2]["spread"]
    png = tmp_path / "grid.png"
    sampled = invoke("sample", str(graph), "--field", "guided", *checkpoints, "-n", "2", "-o", str(png))
    assert sampled.exit_code == 0, sampled.output
    assert json.loads(png.with_suffix(".json").read_text())["rows"] == [
        "guided",
        "a/model",
        "b/model",
        "some/guided",
    ]


def test_eval_json_writes_a_nan_score_as_null(graph: Path, tmp_path: Path) -> None:
    folder = save_model(tmp_path / "broken", value=float("nan"))
    result = invoke("eval", str(graph), "--checkpoint", str(folder), "--samples", "8", "--json")
    assert result.exit_code == 0, result.output

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    rows = json.loads(result.output, parse_constant=refuse)["rows"]
    assert [r["spread"] for r in rows if r["field"] == "broken"] == [None]


@pytest.mark.parametrize("command", ["eval", "sample"])
@pytest.mark.parametrize("seed", ["99999999999999999999999", "9223372036854775808", "-1"])
def test_a_seed_out_of_range_is_a_usage_error(command: str, seed: str, graph: Path, tmp_path: Path) -> None:
    output = ["-o", str(tmp_path / "x.png")] if command == "sample" else ["--json"]
    result = invoke(command, str(graph), "--seed", seed, *output)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--seed'" in result.output and "0<=x<=9223372036854775807" in result.output
    assert "Traceback" not in result.output and not list(tmp_path.glob("x.*"))


def test_the_largest_seed_samples_and_scores(graph: Path, tmp_path: Path) -> None:
    from fieldkit.commands.options import SEED_MAX

    png = tmp_path / "x.png"
    seed = str(SEED_MAX)  # the noise is seeded with seed + 1
    assert invoke("sample", str(graph), "--seed", seed, "-n", "1", "-o", str(png)).exit_code == 0
    assert invoke("eval", str(graph), "--seed", seed, "--samples", "1", "--json").exit_code == 0


def test_eval_explains_the_bar_only_when_a_student_is_judged(graph: Path) -> None:
    from fieldkit.eval.results import LEGEND

    result = invoke("eval", str(graph), "--field", "init", "--samples", "8")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "pass:" not in text and LEGEND in text
    assert "Samples per route that every field is scored on." in " ".join(
        invoke("eval", "--help").output.split()
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_eval_scores_a_half_precision_folder_as_its_float32_copy(
    graph: Path, tmp_path: Path, dtype: str
) -> None:
    import torch

    from fieldkit.models import MMDiT, MMDiTConfig

    torch.manual_seed(0)
    model = MMDiT(
        MMDiTConfig(
            in_channels=1, sample_size=(4, 4), patch_size=2, hidden=16, depth=1, heads=2, num_classes=3
        )
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    half = model.to(getattr(torch, dtype))
    half.save_pretrained(tmp_path / "half")
    half.float().save_pretrained(tmp_path / "full")
    rows = {}
    for name in ("half", "full"):
        result = invoke("eval", str(graph), "--checkpoint", str(tmp_path / name), "--samples", "8", "--json")
        assert result.exit_code == 0, result.output
        rows[name] = [r for r in json.loads(result.output)["rows"] if r["field"] == name]
    assert len(rows["half"]) == 1
    assert {k: v for k, v in rows["half"][0].items() if k != "field"} == {
        k: v for k, v in rows["full"][0].items() if k != "field"
    }


def test_sample_and_eval_step_through_the_graphs_flow_schedule(graph: Path) -> None:
    """sample and eval use the sigmas training rolls out with: ``flow.schedule`` read from the first field."""
    import torch

    from fieldkit import load_graph
    from fieldkit.commands.sources import sampling_sigmas
    from fieldkit.errors import FieldkitError
    from fieldkit.flow import sigma_schedule

    class Scheduled:
        def sampling_sigmas(self, steps: int, shape: tuple[int, ...]) -> torch.Tensor:
            return torch.linspace(1.0, 0.0, steps + 1) ** 2

    class Plain:
        pass

    own = torch.linspace(1.0, 0.0, 5) ** 2
    for schedule, field, expected in (
        ("auto", Scheduled(), own),
        ("model", Scheduled(), own),
        ("auto", Plain(), sigma_schedule(4, 2.0)),
        ("shift", Scheduled(), sigma_schedule(4, 2.0)),
    ):
        spec = load_graph(graph, [f"flow.schedule={schedule}", "flow.shift=2.0"])
        got = sampling_sigmas(spec, {"first": field, "second": Plain()}, (1, 4, 4))  # type: ignore[dict-item]
        assert torch.equal(got, expected), schedule
    with pytest.raises(FieldkitError, match="no scheduler"):
        sampling_sigmas(load_graph(graph, ["flow.schedule=model"]), {"first": Plain()}, (1, 4, 4))  # type: ignore[dict-item]
