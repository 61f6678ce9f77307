"""``fieldkit export``: a fieldkit student keeps its own model layout, a diffusers student goes back into its
pipeline (which diffusers loads), a LoRA student's adapter loads with peft and computes what the merged
student computes; every export has a model card; pushing goes through huggingface_hub's HfApi."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file
from test_cli_run import DISTILL, invoke

from fieldkit import loads_graph
from fieldkit.cond import Cond
from fieldkit.distill.checkpoint import load_checkpoint
from fieldkit.errors import FieldkitError
from fieldkit.export import export_run, push_to_hub
from fieldkit.graph.builder import BuildContext
from fieldkit.models import load_pretrained
from fieldkit.plugins.manager import ALLOW_ENV, reset_host


def said(output: str, *fragments: str) -> bool:
    """Whether the command's ``output`` holds every fragment, whatever the console's line wrapping (which
    may break a long path anywhere)."""
    flat = "".join(output.split())
    return all("".join(fragment.split()) in flat for fragment in fragments)


def test_a_fieldkit_student_exports_in_its_own_layout_with_a_card(quickstart_runs, tmp_path: Path) -> None:
    run = quickstart_runs[0]
    out = tmp_path / "export"
    result = invoke("export", str(run), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "fieldkit MMDiT folder" in " ".join(result.output.split())
    loaded, student = load_pretrained(out), load_pretrained(run / "student")
    for name, value in student.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: fieldkit\n")
    assert "no diffusers pipeline or model class" in card  # says what format it gets and why
    assert "| t2i | guided | gaussian_mixture | 1.0 |" in card  # routes and teachers
    results = json.loads((run / "results.json").read_text())
    for row in results["rows"]:
        assert f"{row['accuracy']:.3f}" in card
    assert "| route: metric | guided (serves t2i) | student |" in card
    [verdict] = results["verdicts"]
    assert f"| **t2i: student / guided** |  | {verdict['ratio']:.3f}x" in card
    assert "![samples of route t2i](samples/t2i.png)" in card and (out / "samples" / "t2i.png").is_file()
    assert "Rows: teacher: guided / student." in card and "1: component " in card
    assert "## Graph" in card and "lr_schedule: constant" in card
    assert "license: other" in card and "weights after the last update (no EMA" in card


def test_the_card_snippet_generates_images_from_the_export_folder_alone(
    quickstart_runs, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    shutil.copytree(quickstart_runs[0], run)
    result = invoke("export", str(run), "--license", "apache-2.0")
    assert result.exit_code == 0, result.output
    out = run / "fieldkit-model"  # the default folder says what it holds
    card = (out / "README.md").read_text()
    assert "license: apache-2.0" in card
    [snippet] = [b for b in re.findall(r"```python\n(.*?)```", card, re.DOTALL) if "generate(" in b]
    assert "# Sampler: 4 Euler steps" in snippet and "shift 3.0" in snippet  # the run's flow settings
    shutil.rmtree(run / "student")  # the export folder is all the snippet reads
    monkeypatch.chdir(run)
    namespace: dict[str, object] = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    images = namespace["images"]
    assert isinstance(images, torch.Tensor) and images.shape == (8, 1, 4, 4) and images.isfinite().all()


def test_a_run_that_stopped_before_its_end_exports_from_a_checkpoint(quickstart_runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(quickstart_runs[0], run)
    shutil.rmtree(run / "student")
    refused = invoke("export", str(run))
    assert refused.exit_code == 2
    assert "the run stopped before its end; it has checkpoints" in refused.output
    assert "--checkpoint latest" in refused.output and not (run / "fieldkit-model").exists()
    result = invoke("export", str(run), "--checkpoint", "latest")
    assert result.exit_code == 0, result.output
    # the last checkpoint is the end of the run: its student is the one the run exported
    loaded, student = load_pretrained(run / "fieldkit-model"), load_pretrained(quickstart_runs[0] / "student")
    for name, value in student.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)


def test_latest_skips_a_damaged_newest_checkpoint_says_so_and_the_card_names_the_step(
    quickstart_runs, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(quickstart_runs[0], run)
    final = invoke("export", str(run), "--checkpoint", "latest", "-o", str(tmp_path / "final"))
    assert final.exit_code == 0, final.output
    assert "skipped" not in final.output
    card = (tmp_path / "final" / "README.md").read_text()
    assert "step-00000004 (step 4 of the run's 4)" in card  # the run's end: its results are these weights'
    assert "| route: metric | guided (serves t2i) | student |" in card
    with (run / "checkpoints" / "step-00000004" / "student.safetensors").open("ab") as fh:
        fh.write(b"x")
    result = invoke("export", str(run), "--checkpoint", "latest", "-o", str(tmp_path / "e"))
    assert result.exit_code == 0, result.output
    assert said(
        result.output,
        "skipped a checkpoint that does not load",
        "step-00000004: student.safetensors is truncated",
        "its weights:",
        "step-00000002 (step 2)",
    )
    card = (tmp_path / "e" / "README.md").read_text()
    assert "Its weights are from the training checkpoint step-00000002 (step 2 of the run's 4)" in card
    assert "after the last update" not in card
    assert "| route: metric |" not in card and "not on these weights from step 2" in card
    assert "Sampled during the run at step 4." in card
    exported, saved = load_pretrained(tmp_path / "e"), load_checkpoint(run / "checkpoints" / "step-00000002")
    for name, value in saved.student.items():
        torch.testing.assert_close(exported.state_dict()[name], value, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("which", "says", "hint"),
    [
        (
            "step-00000002",
            "step-00000002: no such checkpoint folder",
            "--checkpoint RUN/checkpoints/step-00000002",
        ),
        ("nonexist", "nonexist: no such checkpoint folder", "--checkpoint latest"),
        ("RUN/student", "a model folder, not a training checkpoint", "export takes RUN/student"),
        ("PIPELINE", "a diffusers pipeline folder, not a training checkpoint", "--checkpoint latest"),
    ],
)
def test_a_checkpoint_that_is_no_checkpoint_gets_a_message_for_export(
    quickstart_runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str, says: str, hint: str
) -> None:
    run = quickstart_runs[0]
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    which = which.replace("RUN", str(run)).replace("PIPELINE", str(tmp_path / "pipe"))
    monkeypatch.chdir(tmp_path)
    result = invoke("export", str(run), "--checkpoint", which, "-o", str(tmp_path / "e"))
    assert result.exit_code == 2
    assert said(result.output, says, hint.replace("RUN", str(run)))
    assert "--resume" not in result.output and "interrupted" not in result.output
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (
            lambda s: (s / "model.safetensors").write_bytes(b""),
            "model.safetensors: not a readable safetensors",
        ),
        (lambda s: (s / "model.safetensors").unlink(), "model.safetensors: no such weights file"),
        (lambda s: (s / "config.json").write_text("{not json"), "config.json is not readable JSON"),
        (lambda s: (s / "config.json").write_text("[1]"), "not a model config (a JSON list"),
    ],
)
def test_a_damaged_student_is_refused_before_anything_is_copied(
    quickstart_runs, tmp_path: Path, damage, says: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(quickstart_runs[0], run)
    damage(run / "student")
    result = invoke("export", str(run))
    assert result.exit_code == 2
    assert said(result.output, says, "--checkpoint latest")
    assert not (run / "fieldkit-model").exists() and not (run / "diffusers-model").exists()


@pytest.mark.parametrize(
    "args",
    [["--license", "not a license!!"], ["--license", ""], ["--license", "mit;rm"], ["--base", "BASE"]],
)
def test_a_bad_license_and_a_base_for_a_fieldkit_student_are_refused(
    quickstart_runs, tmp_path: Path, args: list[str]
) -> None:
    (tmp_path / "base").mkdir()
    args = [a.replace("BASE", str(tmp_path / "base")) for a in args]
    result = invoke("export", str(quickstart_runs[0]), *args, "-o", str(tmp_path / "e"))
    assert result.exit_code == 2
    assert said(result.output, "apache-2.0" if args[0] == "--license" else "leave out --base")
    assert not (tmp_path / "e").exists()


def test_export_refuses_an_existing_folder_and_a_peft_export_of_a_full_student(
    quickstart_runs, tmp_path: Path
) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    result = invoke("export", str(quickstart_runs[0]), "-o", str(taken))
    assert result.exit_code == 2 and "already exists" in result.output
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    result = invoke("export", str(quickstart_runs[0]), "--format", "peft", "-o", str(tmp_path / "p"))
    assert result.exit_code == 2 and "trained in full" in result.output
    assert not (tmp_path / "p").exists() and not any(p.name.startswith(".p") for p in tmp_path.iterdir())


LORA = DISTILL.replace("student: {init: init}", "student: {init: init, train: lora, lora: {rank: 2}}")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of the quickstart world with a LoRA student, checkpoints at steps 2 and 4 (read-only)."""
    root = tmp_path_factory.mktemp("lora")
    (root / "graph.yaml").write_text(LORA)
    with pytest.MonkeyPatch.context() as patch:  # set up before the autouse fixtures: no installed plugin
        patch.setenv(ALLOW_ENV, "")
        reset_host()
        result = invoke("distill", str(root / "graph.yaml"), "--out", str(root / "run"), "--no-progress")
    reset_host()
    assert result.exit_code == 0, result.output
    return root / "run"


def test_a_lora_student_exports_a_peft_adapter_that_computes_the_merged_student(
    lora_run: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    graph_text, run = LORA, lora_run
    out = tmp_path / "adapter"
    result = invoke("export", str(run), "--format", "peft", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    assert all(".lora_" in k for k in load_file(out / "adapter_model.safetensors"))
    base = BuildContext(loads_graph(graph_text)).field("init")
    x, sigma = torch.randn(3, 1, 4, 4), torch.rand(3)
    cond = Cond({"label": torch.tensor([0, 1, 2])})
    merged = load_pretrained(run / "student")
    with torch.no_grad():
        before = base(x, sigma, cond).clone()
        adapted = PeftModel.from_pretrained(base, str(out)).eval()
        torch.testing.assert_close(adapted(x, sigma, cond), merged(x, sigma, cond), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(before, merged(x, sigma, cond))  # the adapter is what training changed
    # the model card's Python is formatted as this repository formats its own (committed cards pass lint)
    card = (out / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    ruff = [sys.executable, "-m", "ruff", "format", "--check", "--stdin-filename", "card.py", "-"]
    assert subprocess.run(ruff, input=snippet, text=True, capture_output=True).returncode == 0, snippet


def test_a_peft_export_takes_the_checkpoint_it_is_given(lora_run: Path, tmp_path: Path) -> None:
    newest = invoke("export", str(lora_run), "--format", "peft", "-o", str(tmp_path / "newest"))
    assert newest.exit_code == 0, newest.output
    step2 = lora_run / "checkpoints" / "step-00000002"
    result = invoke(
        "export", str(lora_run), "--format", "peft", "--checkpoint", str(step2), "-o", str(tmp_path / "a")
    )
    assert result.exit_code == 0, result.output
    assert said(result.output, "from step-00000002")
    card = (tmp_path / "a" / "README.md").read_text()
    assert "training checkpoint step-00000002 (step 2 of the run's 4)" in card
    assert "| route: metric |" not in card and "not on these weights from step 2" in card
    adapter, latest = (load_file(tmp_path / f / "adapter_model.safetensors") for f in ("a", "newest"))
    assert adapter.keys() == latest.keys()
    assert any(not torch.equal(adapter[k], latest[k]) for k in adapter)  # step 2's, not the newest's
    refused = invoke(
        "export", str(lora_run), "--format", "peft", "--checkpoint", "nope", "-o", str(tmp_path / "b")
    )
    assert refused.exit_code == 2 and said(refused.output, "nope: no such checkpoint folder")
    assert "--resume" not in refused.output and not (tmp_path / "b").exists()


def test_a_peft_export_of_a_run_without_checkpoints_says_what_to_export_instead(
    lora_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(lora_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    result = invoke("export", str(run), "--format", "peft")
    assert result.exit_code == 2
    assert said(result.output, "the run has no checkpoints", "--format diffusers")
    assert not (run / "peft-lora").exists()


def test_a_diffusers_student_goes_back_into_its_pipeline_which_diffusers_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = pytest.importorskip("fieldkit_sd3.tiny", reason="the sd3 plugin is not installed")
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    pipeline = tiny.make_tiny_pipeline(tmp_path / "base")
    run = tmp_path / "run"
    student = SD3Transformer2DModel.from_pretrained(pipeline / "transformer")
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01)
    student.save_pretrained(run / "student")
    graph = {  # the model path relative to the graph file's folder, as graphs write it
        "fields": {"init": {"type": "sd3", "path": "base"}},
        "student": {"init": "init", "train": "full"},
    }
    (run / "graph.json").write_text(json.dumps(graph))
    (run / "sessions.jsonl").write_text(json.dumps({"step": 0, "graph": str(tmp_path / "graph.yaml")}) + "\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # resolved against the graph's folder, not the working one
    out = tmp_path / "export"
    result = invoke("export", str(run), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "StableDiffusion3Pipeline folder" in " ".join(result.output.split())
    loaded = StableDiffusion3Pipeline.from_pretrained(out, vae=None)  # the tiny pipeline has no VAE
    for name, value in student.state_dict().items():
        torch.testing.assert_close(loaded.transformer.state_dict()[name], value, rtol=0, atol=0)
    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "DiffusionPipeline.from_pretrained" in card
    assert f"base_model: {graph['fields']['init']['path']}" in card  # the init it started from
    assert 'image = pipe("a photo of a cat", num_inference_steps=16).images[0]' in card
    assert "no sample grids" in card.lower() and "No route had metrics" in card


class RecordingHfApi(HfApi):
    """huggingface_hub's client with the network boundary (creating a repo, uploading) recorded instead."""

    def __init__(self) -> None:
        super().__init__(token="hf_offline_test")
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id: str, **kwargs):  # type: ignore[override]
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):  # type: ignore[override]
        files = sorted(
            str(p.relative_to(kwargs["folder_path"])) for p in Path(kwargs["folder_path"]).rglob("*")
        )
        self.calls.append(("upload_folder", {**kwargs, "files": files}))


def test_push_to_hub_creates_the_repo_and_uploads_the_folder_with_its_card(
    quickstart_runs, tmp_path: Path
) -> None:
    exported = export_run(quickstart_runs[0], "diffusers", tmp_path / "export")
    api = RecordingHfApi()
    url = push_to_hub(exported.folder, "someone/quickstart-student", api=api, private=True)
    assert url == "https://huggingface.co/someone/quickstart-student"
    (create, created), (upload, uploaded) = api.calls
    assert create == "create_repo" and created["private"] is True and created["exist_ok"] is True
    assert upload == "upload_folder" and uploaded["repo_id"] == "someone/quickstart-student"
    assert {"README.md", "config.json", "model.safetensors", "samples/t2i.png"} <= set(uploaded["files"])


def test_a_failed_upload_keeps_the_folder_and_says_how_to_upload_it_later(
    quickstart_runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "export"
    result = invoke("export", str(quickstart_runs[0]), "-o", str(out), "--push-to-hub", "someone/student")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{out} is written" in text and "OfflineModeIsEnabled" in text
    assert "hf upload someone/student" in text
    assert (out / "README.md").is_file() and (out / "model.safetensors").is_file()

    class Unreachable(HfApi):
        def create_repo(self, repo_id: str, **kwargs):  # type: ignore[override]
            raise httpx.ConnectError("[Errno 101] Network is unreachable")

    with pytest.raises(FieldkitError, match="Network is unreachable"):
        push_to_hub(out, "someone/student", api=Unreachable(token="hf_offline_test"))
