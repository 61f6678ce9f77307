"""fieldkit's own backbones, built on :mod:`fieldkit.attention` and saved as config + safetensors.

The model classes import torch on first use (``fieldkit.models.MMDiT``); the configs do not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fieldkit.models.config import MMDiTConfig

if TYPE_CHECKING:
    from fieldkit.models.mmdit import MMDiT
    from fieldkit.models.pretrained import PretrainedField
    from fieldkit.models.registry import MODEL_CLASSES, load_pretrained

_LAZY = {
    "MMDiT": "fieldkit.models.mmdit",
    "PretrainedField": "fieldkit.models.pretrained",
    "MODEL_CLASSES": "fieldkit.models.registry",
    "load_pretrained": "fieldkit.models.registry",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fieldkit.models' has no attribute {name!r}")


__all__ = ["MODEL_CLASSES", "MMDiT", "MMDiTConfig", "PretrainedField", "load_pretrained"]
