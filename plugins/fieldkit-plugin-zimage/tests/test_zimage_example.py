"""examples/zimage: both graphs validate as written, and their tiny copies (examples/zimage/make_tiny.py)
validate, dry-run and train on CPU through the CLI, rolling out on the pipeline's own sigmas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fieldkit import load_graph
from fieldkit.cli import cli
from fieldkit.testing import distill_tiny_graph, make_tiny_example

EXAMPLES = Path(__file__).parents[3] / "examples" / "zimage"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_example(EXAMPLES, tmp_path_factory.mktemp("zimage-example"))


def test_the_real_graphs_validate(zimage_plugin) -> None:
    graph = load_graph(EXAMPLES / "graph.yaml")
    assert set(graph.spec.routes) == {"t2i", "local", "global"}
    assert [graph.nodes[n].registration.name for n in ("t2i", "local", "global")] == [
        "zimage.guidance",
        "zimage.lora",
        "zimage.lora",
    ]
    realism = load_graph(EXAMPLES / "realism.yaml")
    assert realism.nodes["realism"].registration.name == "zimage.guidance"
    for g in (graph, realism):
        assert g.spec.student is not None and g.spec.student.train == "lora"
        assert g.spec.flow.schedule == "model"


@pytest.mark.parametrize("name", ["graph", "realism"])
def test_the_tiny_graphs_validate_dry_run_and_train(zimage_plugin, workspace: Path, name: str) -> None:
    distill_tiny_graph(cli, workspace / f"{name}.yaml", workspace / "runs" / name)


def test_the_rollout_steps_through_the_pipelines_sigmas(zimage_plugin, workspace: Path, tiny: Path) -> None:
    """With a dynamically shifting scheduler (the static shift 3 of the released models gives the even grid
    exactly, see docs/zimage.md), ``model`` and ``shift`` differ, and the engine takes the pipeline's."""
    from fieldkit_zimage.field import ZImageField

    from fieldkit.backbones.loading import scheduler_config
    from fieldkit.distill.engine import Engine
    from fieldkit.flow import sigma_schedule

    base = f"fields.base.path={tiny / 't2i-dynamic'}"
    engine = Engine(load_graph(workspace / "graph.yaml", [base]), write=False, show_progress=False)
    folder = tiny / "t2i-dynamic"
    field = ZImageField(ZImageField.load_transformer(folder), scheduler=scheduler_config(folder))
    want = field.sampling_sigmas(4, (16, 8, 8))
    assert all(torch.equal(sigmas, want) for sigmas in engine.session.sigmas.values())
    shift = load_graph(workspace / "graph.yaml", [base, "flow.schedule=shift"])
    assert torch.equal(
        Engine(shift, write=False, show_progress=False).session.sigmas["t2i"], sigma_schedule(4, 3.0)
    )
    assert (want - sigma_schedule(4, 3.0)).abs().max() > 0.05
