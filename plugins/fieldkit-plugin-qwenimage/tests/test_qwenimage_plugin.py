"""The distribution: its entry point, its registered types and command, and no diffusers at import time."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from fieldkit.cli import cli
from fieldkit.testing import assert_make_tiny_refuses, entry_point_report

TYPES = {
    "source": ["qwenimage", "qwenimage.edit", "qwenimage.lora"],
    "operator": ["qwenimage.guidance"],
    "dataset": ["qwenimage.prompts", "qwenimage.edits"],
}


def test_the_entry_point_is_declared_by_the_installed_distribution() -> None:
    (ep,) = [ep for ep in metadata.entry_points(group="fieldkit") if ep.name == "qwenimage"]
    assert ep.value == "fieldkit_qwenimage"
    assert ep.dist is not None and ep.dist.name == "fieldkit-plugin-qwenimage"


def test_fieldkit_loads_the_plugin_through_its_entry_point_without_importing_diffusers() -> None:
    report = entry_point_report("qwenimage")
    assert report["failures"] == []
    assert report["types"] == TYPES
    assert report["heavy"] == []


@pytest.mark.slow
def test_make_tiny_writes_both_pipelines(qwenimage_plugin, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["qwenimage-make-tiny", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "QwenImagePipeline" in (tmp_path / "m" / "t2i" / "model_index.json").read_text()
    assert "QwenImageEditPipeline" in (tmp_path / "m" / "edit" / "model_index.json").read_text()


def test_make_tiny_refuses_a_folder_with_files_and_a_seed_torch_cannot_take(
    qwenimage_plugin, tmp_path: Path
) -> None:
    assert_make_tiny_refuses(cli, "qwenimage-make-tiny", tmp_path, "t2i")
