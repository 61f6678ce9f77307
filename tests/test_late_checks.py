"""Values that used to pass ``validate`` and fail mid-``distill`` (or silently run) are refused by
``fieldkit validate`` with the file, the line and the key; a NaN teacher fails the dry run; a launcher's
mixed precision that disagrees with the graph is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fieldkit.cli import cli
from fieldkit.distill.session import make_accelerator
from fieldkit.errors import FieldkitError
from fieldkit.models import MMDiT, MMDiTConfig

MODEL = "{in_channels: 1, sample_size: [4, 4], patch_size: 2, hidden: 16, depth: 1, heads: 2, num_classes: 3}"
WORLD = "{type: gaussian_mixture, classes: 3, shape: [1, 4, 4], std: 0.2}"
GRAPH = f"""\
fields:
  mixture: {WORLD}
  other: {WORLD}
  guided: {{type: guidance, field: mixture, w: 2.0}}
  both: {{type: mix, fields: [mixture, other], weights: [1.0, 1.0]}}
  init: {{type: fieldkit.mmdit, config: {MODEL}}}
routes:
  t2i:
    field: guided
    weight: 1.0
    data: {WORLD}
student: {{init: init}}
flow: {{steps: 4, shift: 3.0}}
run: {{steps: 2, batch_size: 4, device: cpu}}
"""
DATA = "routes.t2i.data"
BIG_ROLLOUT = "method: {type: danceopd, rollout_steps: 9999}\nflow: {steps: 4"


def validate(tmp_path: Path, text: str, *overrides: str):
    path = tmp_path / "graph.yaml"
    path.write_text(text)
    args = ["validate", str(path)]
    for item in overrides:
        args += ["--set", item]
    return path, CliRunner().invoke(cli, args)


def test_the_base_graph_is_valid(tmp_path):
    _, result = validate(tmp_path, GRAPH)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("old", "new", "key", "line"),
    [
        ("weight: 1.0", "weight: .inf", "routes.t2i.weight", 10),
        ("shift: 3.0", "shift: .inf", "flow.shift", 13),
        ("w: 2.0", "w: .nan", "fields.guided.w", 4),
        ("batch_size: 4", "batch_size: 1000000000000", "run.batch_size", 14),
        ("weights: [1.0, 1.0]", "weights: [0.0, 0.0]", "fields.both", 5),
        ("device: cpu", "device: bogus", "run.device", 14),
        ("device: cpu", "device: cpu, attention: bogus", "run.attention", 14),
        ("device: cpu", "device: cpu, out: 'runs/{x}'", "run.out", 14),
        ("device: cpu", "device: cpu, out: ''", "run.out", 14),
        ("data: {type: gaussian_mixture, classes: 3", "data: {type: gaussian_mixture, classes: 9", DATA, 11),
        ("flow: {steps: 4", BIG_ROLLOUT, "method.rollout_steps", 13),
    ],
    ids=["inf-weight", "inf-shift", "nan-guidance", "huge-batch", "zero-mix", "bogus-device",
         "bogus-attention", "stray-placeholder", "empty-out", "classes-beyond-student", "huge-rollout"],
)  # fmt: skip
def test_a_late_failure_is_refused_by_validate_with_file_line_and_key(tmp_path, old, new, key, line):
    assert old in GRAPH
    path, result = validate(tmp_path, GRAPH.replace(old, new, 1))
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{path}:{line}: {key}" in text, text
    assert "Traceback" not in text and "unexpected" not in text


def test_data_labels_beyond_a_teachers_are_refused(tmp_path):
    text = GRAPH.replace(
        "other: {type: gaussian_mixture, classes: 3", "other: {type: gaussian_mixture, classes: 2"
    )
    text = text.replace("field: guided", "field: both")
    _, result = validate(tmp_path, text)
    assert result.exit_code == 2
    assert "field 'other' takes only 2 classes" in " ".join(result.output.split())


def test_a_nan_teacher_fails_the_build_checks_naming_it(tmp_path):
    config = MMDiTConfig(
        in_channels=1, sample_size=(4, 4), patch_size=2, hidden=16, depth=1, heads=2, num_classes=3
    )
    teacher = MMDiT(config)
    with torch.no_grad():
        teacher.proj_out.bias.fill_(float("nan"))
    teacher.save_pretrained(tmp_path / "teacher")
    text = GRAPH.replace("field: guided", "field: nan_teacher").replace(
        "fields:\n", "fields:\n  nan_teacher: {type: fieldkit.checkpoint, path: teacher}\n"
    )
    path = tmp_path / "graph.yaml"
    path.write_text(text)
    for args in (["distill", str(path), "--dry-run"], ["validate", str(path), "--build"]):
        result = CliRunner().invoke(cli, args)
        out = " ".join(result.output.split())
        assert result.exit_code == 2 and "dry run ok" not in out and "valid:" not in out, result.output
        assert "fields.nan_teacher" in out and "returned NaN or infinite velocities" in out


def test_a_launcher_mixed_precision_that_disagrees_with_the_graph_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(FieldkitError, match=r"run\.precision is 'fp32'") as err:
        make_accelerator("cpu", "fp32")
    assert "run.precision: bf16" in err.value.hint
    assert make_accelerator("cpu", "bf16").mixed_precision == "no"  # the engine's own autocast does bf16
