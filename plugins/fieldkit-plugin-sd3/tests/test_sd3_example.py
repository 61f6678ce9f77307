"""examples/sd3: the tiny graph runs end to end on CPU through the CLI; its outputs load in diffusers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from click.testing import CliRunner

from fieldkit import load_graph
from fieldkit.cli import cli

EXAMPLES = Path(__file__).parents[3] / "examples" / "sd3"


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_tiny_graph_distills_exports_and_loads_in_diffusers(sd3_plugin, tmp_path: Path) -> None:
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import PeftModel

    example = tmp_path / "sd3"
    shutil.copytree(EXAMPLES, example, ignore=shutil.ignore_patterns("tiny-models"))
    invoke("sd3-make-tiny", str(example / "tiny-models"))
    run = tmp_path / "run"
    invoke(
        "distill",
        str(example / "tiny.yaml"),
        "--set",
        "run.steps=2",
        "--set",
        "run.log_every=1",
        "--set",
        "student.lora.rank=null",  # the model's default rank (8 for SD3): graph.json keeps null
        "--out",
        str(run),
        "--no-progress",
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["finite"] for r in records)
    assert {r["route"] for r in records} <= {"t2i", "edit"}
    assert (example / "tiny-models" / "prompts.sd3-embeddings.safetensors").is_file()

    # the student samples from its folder, on the pipeline's scheduler that the folder keeps
    assert json.loads((run / "student" / "scheduler_config.json").read_text())["shift"] == 3.0
    grid = tmp_path / "student.png"
    invoke(
        "sample", str(example / "tiny.yaml"), "--checkpoint", str(run / "student"), "-n", "2", "-o", str(grid)
    )
    assert grid.is_file()

    invoke("export", str(run), "--format", "peft", "-o", str(run / "lora"))
    config = json.loads((run / "lora" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["base_model_name_or_path"] == str(example / "tiny-models" / "sd3")
    assert not any(m.startswith("transformer.") for m in config["target_modules"])
    pipe = StableDiffusion3Pipeline.from_pretrained(str(example / "tiny-models" / "sd3"), vae=None)
    pipe.load_lora_weights(str(run / "lora"))
    student = SD3Transformer2DModel.from_pretrained(str(run / "student"))
    base = SD3Transformer2DModel.from_pretrained(
        str(example / "tiny-models" / "sd3"), subfolder="transformer"
    )
    peft_model = PeftModel.from_pretrained(base, str(run / "lora")).eval()
    with torch.no_grad():
        text, _, pooled, _ = pipe.encode_prompt("a red fox", None, None, do_classifier_free_guidance=False)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kwargs = dict(
        hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text, pooled_projections=pooled
    )
    with torch.inference_mode():
        # the pipeline with the exported LoRA = the exported (merged) student folder
        want = student(**kwargs).sample
        torch.testing.assert_close(pipe.transformer(**kwargs).sample, want, rtol=0, atol=1e-5)
        # and peft's own loader, as the export's README says
        torch.testing.assert_close(peft_model(**kwargs).sample, want, rtol=0, atol=1e-5)
        with peft_model.disable_adapter():
            moved = (peft_model(**kwargs).sample - want).abs().max()
    assert moved > 1e-4  # training moved the student off its base: the adapter is what was loaded


def test_the_sd35_graph_validates(sd3_plugin) -> None:
    graph = load_graph(EXAMPLES / "graph.yaml")
    assert set(graph.spec.routes) == {"t2i", "edit"}
    assert graph.nodes["t2i_cfg"].registration.name == "guidance"
    assert graph.nodes["edit"].registration.name == "sd3.lora"
    assert graph.spec.student is not None and graph.spec.student.train == "lora"
