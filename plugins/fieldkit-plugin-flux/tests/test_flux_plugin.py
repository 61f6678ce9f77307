"""The distribution: its entry point, its registered types and command, and no diffusers at import time."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from fieldkit.cli import cli
from fieldkit.testing import assert_make_tiny_refuses, entry_point_report

TYPES = {"source": ["flux", "flux.kontext", "flux.lora"], "dataset": ["flux.prompts", "flux.edits"]}


def test_the_entry_point_is_declared_by_the_installed_distribution() -> None:
    (ep,) = [ep for ep in metadata.entry_points(group="fieldkit") if ep.name == "flux"]
    assert ep.value == "fieldkit_flux"
    assert ep.dist is not None and ep.dist.name == "fieldkit-plugin-flux"


def test_fieldkit_loads_the_plugin_through_its_entry_point_without_importing_diffusers() -> None:
    report = entry_point_report("flux")
    assert report["failures"] == []
    assert report["types"] == TYPES
    assert report["heavy"] == []


@pytest.mark.slow
def test_make_tiny_writes_both_pipelines(flux_plugin, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["flux-make-tiny", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "FluxPipeline" in (tmp_path / "m" / "t2i" / "model_index.json").read_text()
    assert "FluxKontextPipeline" in (tmp_path / "m" / "kontext" / "model_index.json").read_text()


def test_make_tiny_refuses_a_folder_with_files_and_a_seed_torch_cannot_take(
    flux_plugin, tmp_path: Path
) -> None:
    assert_make_tiny_refuses(cli, "flux-make-tiny", tmp_path, "t2i")
