"""The third-party plugin written from docs/plugins.md alone (tests/plugins/fieldkit-plugin-tempered,
pip-installed by the ``plugin_site`` fixture as a distribution with a ``fieldkit`` entry point): its router,
data bucket, metric and method are found through the entry point and train a student from YAML."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from fieldkit import loads_graph
from fieldkit.distill.engine import Engine

DOCS = Path(__file__).parent.parent / "docs" / "plugins.md"
# The graph docs/plugins.md shows for this plugin: what a reader copies is what trains here.
[GRAPH] = [
    b
    for b in re.findall(r"^```yaml\n(.*?)^```$", DOCS.read_text(), re.DOTALL | re.MULTILINE)
    if "tempered" in b
]


@pytest.fixture
def tempered(use_plugins):
    """Only the tempered plugin loads, through its entry point."""
    host = use_plugins("tempered")
    assert not host.failures, host.failures
    return host


def test_the_plugin_is_found_through_its_entry_point(tempered):
    types = tempered.registry.by_plugin()["tempered"]
    assert types == {
        "router": ["tempered"],
        "dataset": ["tempered.levels"],
        "metric": ["tempered.level_error"],
        "method": ["tempered.straight"],
    }


def test_the_tempered_router_draws_routes_with_probabilities_w_to_the_one_over_t(tempered):
    engine = Engine(loads_graph(GRAPH), write=False, show_progress=False)
    root = math.sqrt(3.0)  # w^(1/T) with w = (3, 1), T = 2
    torch.testing.assert_close(
        engine.session.router.probs, torch.tensor([root, 1.0], dtype=torch.float64) / (root + 1)
    )
    g = torch.Generator().manual_seed(0)
    counts = Counter(engine.session.router.plan(2, g, 0)[0] for _ in range(4000))
    assert abs(counts[0] / 4000 - root / (root + 1)) < 0.03  # about 4 standard errors


def test_a_student_trains_from_yaml_with_the_plugins_types(tempered, tmp_path):
    result = Engine(loads_graph(GRAPH), tmp_path / "run", show_progress=False).run()
    losses = [r["loss"] for r in result.history]
    assert result.step == 60 and result.bad_steps == 0 and all(map(math.isfinite, losses))
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])  # it learned
    assert set(result.route_steps) == {"three", "two"}
    scores = {(s.field, s.route): s.values for s in result.scores}
    # The teacher carries noise exactly to each label's level; the student gets closer than its start.
    assert scores[("flat", "three")]["level_error"] < 1e-4
    assert 0 < scores[("student", "three")]["score"] <= 1
    assert (tmp_path / "run" / "results.json").exists()
