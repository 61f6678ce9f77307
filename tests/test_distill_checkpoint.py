"""Checkpoints and resume: a resumed run continues the same curve (weights, optimizer, EMA, loss history,
router and data RNG), old checkpoints are pruned, damaged ones are refused and ``latest`` falls back, and
a folder that holds a run is never overwritten."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from fieldkit import loads_graph
from fieldkit.distill.checkpoint import list_checkpoints, load_checkpoint, verify_checkpoint
from fieldkit.distill.engine import Engine
from fieldkit.distill.rundir import LOCK
from fieldkit.errors import CheckpointError, FieldkitError

TWO_ROUTES = """
fields:
  ta: {type: affine, seed: 1}
  tb: {type: affine, seed: 3}
  init: {type: affine, seed: 2}
routes:
  a: {field: ta, data: {type: marked, marker: 1, classes: 3}}
  b: {field: tb, weight: 2, data: {type: marked, marker: 2, classes: 5, seed: 1}}
student: {init: init, ema: 0.9}
router: {type: hard, granularity: sample}
flow: {steps: 6}
run: {steps: 8, batch_size: 4, grad_accum: 2, lr: 0.02, log_every: 1, device: cpu}
"""

VOLATILE = ("time/", "steps_per_s")


def engine(out: Path, *overrides: str, resume: str | None = None) -> Engine:
    graph = loads_graph(textwrap.dedent(TWO_ROUTES), overrides)
    return Engine(graph, out=out, resume=resume, show_progress=False)


def metrics(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(VOLATILE)} for line in lines]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime, but the lock file's (every process that opens the folder writes it)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and p.name != LOCK
    }


def flip_byte(path: Path, offset: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_resume_continues_exactly_where_an_uninterrupted_run_goes(distill_world, tmp_path):
    straight = engine(tmp_path / "straight", "run.steps=8")
    whole = straight.run()
    first = engine(tmp_path / "split", "run.steps=4").run()
    assert first.step == 4 and first.checkpoint is not None and first.checkpoint.name == "step-00000004"
    resumed = engine(tmp_path / "split", "run.steps=8", resume="latest")
    assert resumed.step == 4
    rest = resumed.run()
    assert rest.step == 8
    # Both routes were used, and the router drew per micro-batch: the router RNG mattered.
    assert set("+".join(r["route"] for r in whole.history).split("+")) == {"a", "b"}
    assert any("+" in r["route"] for r in whole.history)
    # Weights, EMA, optimizer state and every RNG stream agree.
    for name, value in whole.student.state_dict().items():
        torch.testing.assert_close(rest.student.state_dict()[name], value, rtol=1e-6, atol=1e-7)
    for name, value in straight.session.ema.shadow.items():
        torch.testing.assert_close(resumed.session.ema.shadow[name], value, rtol=1e-6, atol=1e-7)
    opt_a, opt_b = straight.session.optimizer.state_dict(), resumed.session.optimizer.state_dict()
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for pid, slots in opt_a["state"].items():
        for key, value in slots.items():
            torch.testing.assert_close(opt_b["state"][pid][key], value, rtol=1e-6, atol=1e-7)
    for key in ("lr", "weight_decay", "eps"):
        assert opt_b["param_groups"][0][key] == opt_a["param_groups"][0][key]
    assert tuple(opt_b["param_groups"][0]["betas"]) == tuple(opt_a["param_groups"][0]["betas"])
    for name, gen in straight.session.generators.items():
        assert torch.equal(resumed.session.generators[name].get_state(), gen.get_state()), name
    # The loss history is the same curve, each step once.
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["route"] for r in b] == [r["route"] for r in a]
    assert [r["rollout_nfe"] for r in b] == [r["rollout_nfe"] for r in a]
    for ra, rb in zip(a, b, strict=True):
        for key in ra:
            if key.startswith(("loss", "grad_norm")):
                assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-9), (ra["step"], key)
    tail = [r["loss"] for r in whole.history[4:]]
    assert [r["loss"] for r in rest.history] == pytest.approx(tail, rel=1e-5)


def test_resume_with_another_seed_state_would_differ(distill_world, tmp_path):
    """The equality above is not vacuous: a run with another seed follows another curve."""
    a = engine(tmp_path / "a", "run.steps=3").run()
    b = engine(tmp_path / "b", "run.steps=3", "run.seed=1").run()
    assert [r["loss"] for r in a.history] != pytest.approx([r["loss"] for r in b.history], rel=1e-3)


def test_keep_last_prunes_old_checkpoints(distill_world, tmp_path):
    out = tmp_path / "run"
    engine(out, "run.steps=10", "run.checkpoint_every=2", "run.keep_last=2").run()
    root = out / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step-00000008", "step-00000010"]
    assert sorted(p.name for p in root.iterdir()) == ["step-00000008", "step-00000010"]  # no temp folders
    for path in list_checkpoints(root):
        verify_checkpoint(path)
        assert load_checkpoint(path).step == int(path.name[5:])


@pytest.fixture
def three_checkpoints(distill_world, tmp_path) -> Path:
    out = tmp_path / "run"
    engine(out, "run.steps=6", "run.checkpoint_every=2").run()
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [
        "step-00000002",
        "step-00000004",
        "step-00000006",
    ]
    return out


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: flip_byte(p / "student.safetensors"), "student.safetensors is corrupted"),
        (lambda p: flip_byte(p / "rng.safetensors", 100), "rng.safetensors is corrupted"),
        (lambda p: flip_byte(p / "state.json", 5), "state.json is corrupted"),
        (
            lambda p: (p / "optimizer.safetensors").write_bytes(
                (p / "optimizer.safetensors").read_bytes()[:40]
            ),
            "optimizer.safetensors is truncated",
        ),
        (lambda p: (p / "manifest.json").unlink(), "not a complete checkpoint"),
        (lambda p: (p / "ema.safetensors").unlink(), "ema.safetensors is missing"),
    ],
    ids=["bitflip-student", "bitflip-rng", "bitflip-state", "truncated", "no-manifest", "missing-file"],
)
def test_a_damaged_newest_checkpoint_is_refused_and_latest_falls_back(
    three_checkpoints, damage, message, capsys, monkeypatch
):
    out = three_checkpoints
    newest = list_checkpoints(out / "checkpoints")[-1]
    damage(newest)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(newest)
    before = snapshot(out)
    with pytest.raises(CheckpointError, match=message):
        engine(out, "run.steps=10", resume=str(newest))
    assert snapshot(out) == before
    monkeypatch.setenv("COLUMNS", "400")
    capsys.readouterr()
    e = engine(out, "run.steps=10", resume="latest")
    assert e.step == 4 and e.session.checkpoint is not None and e.session.checkpoint.name == "step-00000004"
    err = capsys.readouterr().err
    assert "skipping a bad checkpoint" in err and "step-00000006" in err and message in err
    res = e.run()
    assert res.step == 10
    assert [r["step"] for r in metrics(out)] == list(range(1, 11))


def test_latest_ignores_unfinished_temporary_folders(three_checkpoints):
    out = three_checkpoints
    tmp = out / "checkpoints" / ".step-00000008.999.tmp"  # what fieldkit.atomic leaves if killed
    tmp.mkdir()
    (tmp / "student.safetensors").write_bytes(b"half a file")
    assert engine(out, "run.steps=10", resume="latest").step == 6


def test_no_good_checkpoint_is_a_clear_error(three_checkpoints):
    out = three_checkpoints
    for path in list_checkpoints(out / "checkpoints"):
        flip_byte(path / "student.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        engine(out, "run.steps=10", resume="latest")
    fresh = engine(out.parent / "empty", resume="latest")  # nothing to resume: a fresh start (with a note)
    assert fresh.step == 0 and fresh.session.checkpoint is None


def test_a_new_run_into_a_folder_holding_one_is_refused_and_changes_nothing(three_checkpoints):
    out = three_checkpoints
    before = snapshot(out)
    with pytest.raises(FieldkitError, match="already holds a run") as err:
        engine(out, "run.steps=10")
    assert "--resume" in (err.value.hint or "")
    assert snapshot(out) == before


def test_resuming_a_checkpoint_that_does_not_fit_the_student_is_refused(three_checkpoints):
    out = three_checkpoints
    before = snapshot(out)
    with pytest.raises(CheckpointError, match="do not fit this graph's student"):
        engine(out, "fields.init.channels=2", resume="latest")
    assert snapshot(out) == before


def test_resuming_a_finished_run_rewrites_no_checkpoint(three_checkpoints):
    out = three_checkpoints
    before = snapshot(out / "checkpoints")
    res = engine(out, "run.steps=6", "run.checkpoint_every=2", resume="latest").run()
    assert res.step == 6 and res.checkpoint == out / "checkpoints" / "step-00000006"
    assert snapshot(out / "checkpoints") == before  # not deleted and written again
    assert [r["step"] for r in metrics(out)] == list(range(1, 7))


# -- checkpoints whose manifest is consistent but whose content is not --------------------------------------


def reseal(path: Path) -> None:
    """Recompute the manifest, as a writer that wrote bad content consistently would have."""
    import hashlib

    manifest = json.loads((path / "manifest.json").read_text())
    for name in manifest["files"]:
        data = (path / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(manifest))


def rewrite_state(path: Path, **changes) -> None:
    meta = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**meta, **changes}))


def rewrite_tensors(path: Path, name: str, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / name)
    change(tensors)
    save_file(tensors, path / name)


def _wrong_moment(tensors):
    key = next(k for k in tensors if k.endswith(".exp_avg"))
    tensors[key] = torch.zeros(3, 3)


def _short_rng(tensors):
    tensors["noise"] = tensors["noise"][:10]


def _float_rng(tensors):
    tensors["data"] = tensors["data"].float()


def _fewer_params(path: Path) -> None:
    meta = json.loads((path / "state.json").read_text())
    meta["optimizer"]["param_groups"][0]["params"] = meta["optimizer"]["param_groups"][0]["params"][:1]
    (path / "state.json").write_text(json.dumps(meta))


def rewrite_scalars(path: Path, **changes) -> None:
    meta = json.loads((path / "state.json").read_text())
    rewrite_state(path, scalars={**meta["scalars"], **changes})


def _groups_not_mappings(path: Path) -> None:
    meta = json.loads((path / "state.json").read_text())
    meta["optimizer"]["param_groups"] = [1, "two"]
    (path / "state.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_groups_not_mappings, "param_groups are not a list of groups"),
        (lambda p: rewrite_scalars(p, processes="two"), r"processes \('two'\) is not a count"),
        (lambda p: rewrite_scalars(p, bad_steps="x"), r"bad_steps \('x'\) is not a count"),
        (lambda p: rewrite_scalars(p, lr_schedule="cosine"), "lr_schedule is not"),
        (lambda p: rewrite_scalars(p, lr_schedule={"last_epoch": "x"}), "lr_schedule is not"),
        (lambda p: rewrite_state(p, optimizer=None), "param_groups are not"),
        (lambda p: (p / "state.json").write_text("[]"), "not a JSON object"),
        (lambda p: rewrite_state(p, step=-3), "no valid step"),
        (lambda p: rewrite_state(p, step="six"), "no valid step"),
        (lambda p: rewrite_state(p, step=5), "says step 5, the folder step 6"),
        (lambda p: rewrite_tensors(p, "rng.safetensors", _short_rng), "RNG states do not fit"),
        (lambda p: rewrite_tensors(p, "rng.safetensors", _float_rng), "not a byte vector"),
        (lambda p: rewrite_tensors(p, "optimizer.safetensors", _wrong_moment), r"exp_avg has shape \(3, 3\)"),
        (_fewer_params, "optimizer state is for 1 parameter tensors"),
    ],
    ids=[
        "groups-not-mappings",
        "processes-text",
        "bad-steps-text",
        "schedule-text",
        "schedule-epoch-text",
        "optimizer-null",
        "state-a-list",
        "negative-step",
        "text-step",
        "other-step",
        "short-rng",
        "float-rng",
        "moment-shape",
        "fewer-params",
    ],
)
def test_a_consistent_checkpoint_with_bad_content_falls_back_to_the_previous_one(
    three_checkpoints, damage, message, capsys, monkeypatch
):
    out = three_checkpoints
    newest = list_checkpoints(out / "checkpoints")[-1]
    damage(newest)
    reseal(newest)
    verify_checkpoint(newest)  # the manifest agrees with the files: only their content is wrong
    with pytest.raises(CheckpointError, match=message):
        engine(out, "run.steps=10", resume=str(newest))
    monkeypatch.setenv("COLUMNS", "400")
    capsys.readouterr()
    e = engine(out, "run.steps=10", resume="latest")
    assert e.step == 4 and e.session.checkpoint.name == "step-00000004"
    assert "skipping a bad checkpoint" in capsys.readouterr().err
    assert e.run().step == 10


@pytest.mark.parametrize(
    "files", [["student.safetensors"], {"state.json": "abc"}, {"state.json": {"bytes": "1", "sha256": "0"}}]
)
def test_a_malformed_manifest_is_refused_and_latest_falls_back(three_checkpoints, files):
    out = three_checkpoints
    newest = list_checkpoints(out / "checkpoints")[-1]
    (newest / "manifest.json").write_text(json.dumps({"format": "fieldkit.train-state/1", "files": files}))
    with pytest.raises(CheckpointError, match=r"manifest\.json is malformed"):
        verify_checkpoint(newest)
    assert engine(out, "run.steps=10", resume="latest").step == 4


def test_a_manifest_that_names_a_file_outside_the_checkpoint_is_refused(three_checkpoints):
    out = three_checkpoints
    newest = list_checkpoints(out / "checkpoints")[-1]
    (out / "checkpoints" / "secret").write_text("x")
    manifest = json.loads((newest / "manifest.json").read_text())
    manifest["files"]["../secret"] = {"bytes": 1, "sha256": "0" * 64}
    (newest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="outside the checkpoint"):
        verify_checkpoint(newest)
    assert engine(out, "run.steps=10", resume="latest").step == 4


# -- metrics.jsonl -------------------------------------------------------------------------------------------


def strict_json(line: str) -> dict:
    def refuse(name: str):
        raise AssertionError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


def test_non_finite_values_are_written_as_strict_json(tmp_path):
    from fieldkit.distill.runlog import RunLog

    log = RunLog(tmp_path, enabled=True)
    log.write(
        {"step": 1, "loss": float("nan"), "grad_norm": float("inf"), "loss/a": -float("inf"), "ok": 1.5}
    )
    record = strict_json((tmp_path / "metrics.jsonl").read_text())
    assert record == {"step": 1, "loss": None, "grad_norm": None, "loss/a": None, "ok": 1.5}


def test_a_torn_last_metrics_line_is_repaired_on_resume_with_a_note(three_checkpoints, capsys, monkeypatch):
    out = three_checkpoints
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 7, "route": "a", "lo')  # a write cut short by a full disk
    monkeypatch.setenv("COLUMNS", "400")
    capsys.readouterr()
    e = engine(out, "run.steps=8", resume="latest")
    assert "metrics.jsonl:7: dropped a torn last line" in capsys.readouterr().err
    e.run()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [strict_json(line)["step"] for line in lines] == list(range(1, 9))


def test_a_damaged_metrics_line_before_the_last_names_the_file_and_line(three_checkpoints):
    out = three_checkpoints
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:15]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(FieldkitError, match=r"metrics\.jsonl:3: not a line of metrics") as err:
        engine(out, "run.steps=8", resume="latest")
    assert "fix or delete that line" in err.value.hint
