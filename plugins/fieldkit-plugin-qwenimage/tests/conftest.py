"""Fixtures of the Qwen-Image plugin's tests: tiny random pipelines built from configs (no hub), and the
plugin registered inline, never autoloaded."""

from __future__ import annotations

from pathlib import Path

import fieldkit_qwenimage
import pytest

from fieldkit.testing import image_fixture, plugin_fixtures

qwenimage_plugin, _quiet_diffusers = plugin_fixtures(fieldkit_qwenimage, "qwenimage")
make_image = image_fixture()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``t2i`` (a tiny QwenImagePipeline) and ``edit`` (a tiny QwenImageEditPipeline)."""
    from fieldkit_qwenimage.tiny import make_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-qwenimage")
    make_tiny_pipeline(root / "t2i")
    make_tiny_pipeline(root / "edit", edit=True, seed=3)
    return root
