"""The distribution: its entry point, its registered types and commands, and no diffusers at import time."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from click.testing import CliRunner

from fieldkit.cli import cli
from fieldkit.testing import assert_make_tiny_refuses, entry_point_report

TYPES = {
    "source": ["zimage", "zimage.edit", "zimage.lora"],
    "operator": ["zimage.guidance"],
    "dataset": ["zimage.prompts", "zimage.edits"],
}


def test_the_entry_point_is_declared_by_the_installed_distribution() -> None:
    (ep,) = [ep for ep in metadata.entry_points(group="fieldkit") if ep.name == "zimage"]
    assert ep.value == "fieldkit_zimage"
    assert ep.dist is not None and ep.dist.name == "fieldkit-plugin-zimage"


def test_fieldkit_loads_the_plugin_through_its_entry_point_without_importing_diffusers() -> None:
    """A fresh process finds the plugin by its entry point and lists its types, and neither importing
    fieldkit nor loading the plugin imports diffusers, transformers or peft."""
    report = entry_point_report("zimage")
    assert report["failures"] == []
    assert report["types"] == TYPES
    assert report["heavy"] == []


def test_make_tiny_writes_both_pipelines(zimage_plugin, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["zimage-make-tiny", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    for name in ("t2i", "omni"):
        assert (tmp_path / "m" / name / "model_index.json").is_file()
    assert "ZImageOmniPipeline" in (tmp_path / "m" / "omni" / "model_index.json").read_text()


def test_make_tiny_refuses_a_folder_with_files_and_a_seed_torch_cannot_take(
    zimage_plugin, tmp_path: Path
) -> None:
    assert_make_tiny_refuses(cli, "zimage-make-tiny", tmp_path, "t2i")
