"""examples/qwenimage: both graphs validate as written, and their tiny copies
(examples/qwenimage/make_tiny.py) validate, dry-run and train on CPU through the CLI, and the LoRA student
exports for the pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldkit import load_graph
from fieldkit.cli import cli
from fieldkit.testing import distill_tiny_graph, make_tiny_example

EXAMPLES = Path(__file__).parents[3] / "examples" / "qwenimage"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_example(EXAMPLES, tmp_path_factory.mktemp("qwenimage-example"))


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
    distill_tiny_graph(cli, workspace / f"{name}.yaml", workspace / "runs" / name)
