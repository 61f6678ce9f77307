"""Fixtures of the FLUX plugin's tests: tiny random pipelines built from configs (no hub), and the plugin
registered inline, never autoloaded."""

from __future__ import annotations

from pathlib import Path

import fieldkit_flux
import pytest

from fieldkit.testing import image_fixture, plugin_fixtures

flux_plugin, _quiet_diffusers = plugin_fixtures(fieldkit_flux, "flux")
make_image = image_fixture()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``t2i`` (a tiny FluxPipeline like FLUX.1-dev: guidance embedding, dynamic shift),
    ``kontext`` (a tiny FluxKontextPipeline) and ``schnell`` (no guidance embedding, static shift)."""
    from fieldkit_flux.tiny import make_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-flux")
    make_tiny_pipeline(root / "t2i")
    make_tiny_pipeline(root / "kontext", kontext=True, seed=3)
    make_tiny_pipeline(root / "schnell", dynamic=False, guidance_embeds=False, seed=5)
    return root
