"""examples/qwenimage: both graphs validate as written, and their tiny copies
(examples/qwenimage/make_tiny.py) validate, dry-run and train on CPU through the CLI, and the LoRA student
exports for the pipelines."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fieldkit import load_graph
from fieldkit.cli import cli

EXAMPLES = Path(__file__).parents[3] / "examples" / "qwenimage"


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.spec_from_file_location("make_tiny", EXAMPLES / "make_tiny.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path_factory.mktemp("qwenimage-example")
    script.main([str(out)])
    return out


def test_the_real_graphs_validate(qwenimage_plugin) -> None:
    graph = load_graph(EXAMPLES / "graph.yaml")
    assert set(graph.spec.routes) == {"t2i", "edit"}
    kinds = [graph.nodes[n].registration.name for n in ("base", "t2i", "edit_model", "edit")]
    assert kinds == ["qwenimage", "qwenimage.guidance", "qwenimage.edit", "qwenimage.guidance"]
    loras = load_graph(EXAMPLES / "loras.yaml")
    assert set(loras.spec.routes) == {"plain", "anime", "realism", "poster"}
    for g in (graph, loras):
        assert g.spec.student is not None and g.spec.student.train == "lora"
        assert g.spec.flow.schedule == "model"


@pytest.mark.slow  # the edit bucket encodes its sources at a megapixel: about a minute on 2 busy cores
@pytest.mark.parametrize("name", ["graph", "loras"])
def test_the_tiny_graphs_validate_dry_run_and_train(qwenimage_plugin, workspace: Path, name: str) -> None:
    graph = workspace / f"{name}.yaml"
    invoke("validate", str(graph))
    invoke("distill", str(graph), "--dry-run", "--no-progress")
    run = workspace / "runs" / name
    invoke("distill", str(graph), "--out", str(run), "--no-progress")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["finite"] for r in records)
    assert (run / "student" / "config.json").is_file()
    invoke("export", str(run), "--format", "peft", "-o", str(run / "lora"))
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()
