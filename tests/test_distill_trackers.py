"""Logging intervals and trackers: metrics.jsonl holds the means of every ``run.log_every`` updates, and
``run.report_to: [tensorboard, wandb]`` gets those means, the sample grids as images, the eval metrics and
the graph as hyperparameters (tensorboard read back from its event files, wandb in offline mode)."""

from __future__ import annotations

import json
import struct
import sys
import textwrap
from pathlib import Path

import pytest
from test_cli_run import DISTILL, invoke

from fieldkit import loads_graph
from fieldkit.distill.engine import Engine
from fieldkit.distill.interval import IntervalMeans
from fieldkit.distill.trackers import Where, flat_hparams, installed, where
from fieldkit.errors import FieldkitError
from fieldkit.graph.schema import TRACKERS, TrackerSpec

TWO_ROUTES = """
fields:
  ta: {type: affine, seed: 1}
  tb: {type: affine, seed: 3}
  init: {type: affine, seed: 2}
routes:
  a: {field: ta, data: {type: marked, marker: 1, classes: 3}}
  b: {field: tb, data: {type: marked, marker: 2, classes: 5, seed: 1}}
student: {init: init}
flow: {steps: 4}
run: {steps: 7, batch_size: 4, lr: 0.02, log_every: 3, device: cpu}
"""


def test_interval_means_average_each_key_over_the_updates_that_have_it():
    means = IntervalMeans()
    assert means.flush() is None
    means.add({"step": 1, "route": "a", "loss": 1.0, "loss/a": 1.0, "lr": 0.1, "finite": True})
    means.add({"step": 2, "route": "b", "loss": 2.0, "loss/b": 2.0, "lr": 0.2, "finite": True})
    means.add(
        {"step": 3, "route": "a+b", "loss": 6.0, "loss/a": 5.0, "loss/b": 7.0, "lr": 0.3, "finite": True}
    )
    out = means.flush()
    assert out == {
        "step": 3,
        "route": "a+b",
        "loss": 3.0,
        "loss/a": 3.0,
        "loss/b": 4.5,
        "lr": 0.3,
        "finite": True,
        "updates": 3,
    }
    assert means.flush() is None


def test_metrics_jsonl_holds_the_means_of_each_logging_interval(distill_world, tmp_path):
    result = Engine(loads_graph(textwrap.dedent(TWO_ROUTES)), out=tmp_path / "run", show_progress=False).run()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6, 7]
    assert [r["updates"] for r in lines] == [3, 3, 1]
    for line, chunk in zip(
        lines, (result.history[0:3], result.history[3:6], result.history[6:7]), strict=True
    ):
        assert line["loss"] == pytest.approx(sum(r["loss"] for r in chunk) / len(chunk))
        for route in ("a", "b"):
            own = [r[f"loss/{route}"] for r in chunk if f"loss/{route}" in r]
            assert line.get(f"loss/{route}") == (pytest.approx(sum(own) / len(own)) if own else None)
    assert {"a", "b"} <= set("+".join(r["route"] for r in lines).split("+"))


def test_flat_hparams_names_nested_keys_with_dots():
    assert flat_hparams({"run": {"lr": 0.1, "optimizer": {"type": "sgd"}}, "x": [1, 2], "y": None}) == {
        "run.lr": 0.1,
        "run.optimizer.type": "sgd",
        "x": "[1, 2]",
        "y": "None",
    }


def test_a_missing_tracker_package_is_one_clear_error(distill_world, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None if name == "wandb" else object())
    graph = loads_graph(textwrap.dedent(TWO_ROUTES), ["run.report_to=[wandb]"])
    with pytest.raises(FieldkitError, match=r"hint: pip install wandb"):
        Engine(graph, out=tmp_path / "run", show_progress=False).run()


def test_the_run_is_filed_by_run_tracker_then_the_environment_then_the_defaults(tmp_path, monkeypatch):
    run = tmp_path / "digits-1"
    for var in ("WANDB_PROJECT", "WANDB_NAME", "WANDB_TAGS", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert where("wandb", TrackerSpec(), run) == Where("fieldkit", "digits-1", (), run / "trackers")
    monkeypatch.setenv("WANDB_PROJECT", "env-project")
    monkeypatch.setenv("WANDB_TAGS", "x, y")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "w"))
    assert where("wandb", TrackerSpec(), run) == Where("env-project", "digits-1", ("x", "y"), tmp_path / "w")
    spec = TrackerSpec(project="p", name="n", tags=["t"], dir="d")
    assert where("wandb", spec, run) == Where("p", "n", ("t",), Path("d"))
    # tensorboard reads no environment variable
    assert where("tensorboard", TrackerSpec(), run).project == "fieldkit"


def test_report_to_takes_a_name_a_list_or_all(distill_world, monkeypatch):
    one = loads_graph(textwrap.dedent(TWO_ROUTES), ["run.report_to=tensorboard"])
    assert one.spec.run.report_to == ["tensorboard"]
    assert set(TRACKERS) == set(__import__("accelerate.tracking").tracking.LOGGER_TYPE_TO_CLASS)
    available = {"tensorboard", "wandb"}
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if name in available else None)
    assert installed(["all"]) == ["tensorboard", "wandb"]
    assert installed(["wandb", "all"]) == ["wandb", "tensorboard"]
    with pytest.raises(FieldkitError, match="'mlflow' but the mlflow package is not installed"):
        installed(["mlflow"])
    available.clear()
    with pytest.raises(FieldkitError, match="'all' but no tracker package is installed"):
        installed(["all"])


def test_tensorboard_and_wandb_get_means_grids_eval_metrics_and_hparams(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="pip install 'fieldkit[trackers]'")
    pytest.importorskip("wandb", reason="pip install 'fieldkit[trackers]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "from-env")  # applies: run.tracker.project is unset
    monkeypatch.setenv("WANDB_NAME", "overridden")  # does not: run.tracker.name is set
    graph = tmp_path / "graph.yaml"
    graph.write_text(DISTILL)
    out = tmp_path / "run"
    extra = [
        "--set",
        "run.report_to=[tensorboard, wandb]",
        "--set",
        "run.log_every=2",
        "--set",
        "run.sample_every=2",
    ]
    extra += ["--set", "run.tracker={name: my-run, tags: [a, b]}"]
    result = invoke("distill", str(graph), "--out", str(out), "--no-progress", *extra)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())
    board = out / "trackers" / "fieldkit" / "my-run"  # RUN/trackers/PROJECT/NAME
    assert f"tracker tensorboard: {board} (view: tensorboard --logdir {out / 'trackers'})" in result.stderr
    assert "tracker wandb: project from-env, run my-run: " in result.stderr

    events = EventAccumulator(str(board), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    losses = events.Scalars("loss/t2i")
    assert [e.step for e in losses] == [r["step"] for r in lines] == [2, 4]
    assert [e.value for e in losses] == pytest.approx([r["loss/t2i"] for r in lines], rel=1e-6)
    assert [e.step for e in events.Images("samples/t2i")] == [2, 4]
    image = events.Images("samples/t2i")[-1]
    assert image.width > image.height > 0
    student = next(r for r in results["rows"] if r["field"] == "student")
    accuracy = events.Scalars("eval/t2i/student/accuracy")
    assert [e.value for e in accuracy] == pytest.approx([student["accuracy"]], rel=1e-6)
    hparams = next(board.rglob("hparams.yml")).read_text()
    assert "run.lr: 0.001" in hparams and "run.log_every: 2" in hparams and f"run.out: {out}" in hparams

    import wandb

    wandb.teardown()  # stop wandb's service process: everything it was sent is in the run file now
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    [run] = [r.run for r in records if r.HasField("run")]
    assert (run.project, run.display_name, list(run.tags)) == ("from-env", "my-run", ["a", "b"])
    config = {
        u.key: json.loads(u.value_json) for r in records if r.HasField("config") for u in r.config.update
    }
    assert config["run.lr"] == 0.001 and config["run.report_to"] == "['tensorboard', 'wandb']"
    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.HasField("history")
    ]
    assert [h["_step"] for h in history] == [2, 4]
    assert [h["loss/t2i"] for h in history] == pytest.approx([r["loss/t2i"] for r in lines], rel=1e-6)
    assert all(h["samples/t2i/_type"] == "images/separated" for h in history)  # a grid at each step
    assert history[-1]["eval/t2i/student/accuracy"] == pytest.approx(student["accuracy"], rel=1e-6)
    assert (run_file.parent / "files" / "media" / "images" / "samples").is_dir()


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline wandb run file (a LevelDB-style log: a 7-byte header, then 32 KiB
    blocks of chunks, each ``crc32 u32, length u16, type u8`` (1 full, 2 first, 3 middle, 4 last) + data)."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    pos, block, chunks, records = 7, 32768, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if kind == 0:
            break
        chunks = (b"" if kind in (1, 2) else chunks) + raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
    return records
