"""Fixtures of the Qwen-Image plugin's tests: tiny random pipelines built from configs (no hub), and the
plugin registered inline, never autoloaded."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import fieldkit_qwenimage
import numpy as np
import pytest
from PIL import Image

from fieldkit.plugins.manager import PluginHost
from fieldkit.testing import quiet_diffusers, registered


@pytest.fixture
def qwenimage_plugin() -> Iterator[PluginHost]:
    """The host with this plugin registered inline (removed afterwards)."""
    with registered(fieldkit_qwenimage, "qwenimage") as host:
        yield host


@pytest.fixture(scope="session", autouse=True)
def _quiet_diffusers() -> None:
    quiet_diffusers()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``t2i`` (a tiny QwenImagePipeline) and ``edit`` (a tiny QwenImageEditPipeline)."""
    from fieldkit_qwenimage.tiny import make_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-qwenimage")
    make_tiny_pipeline(root / "t2i")
    make_tiny_pipeline(root / "edit", edit=True, seed=3)
    return root


def random_image(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A random RGB image of ``size`` (width, height)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="session")
def make_image() -> Callable[..., Image.Image]:
    """:func:`random_image`, for tests."""
    return random_image
