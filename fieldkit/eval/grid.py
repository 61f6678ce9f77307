"""Sample grids as PNG: rows of samples (one row per field), images in [-1, 1] mapped to [0, 255]."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_image(x: Tensor) -> Tensor:
    """``[C, H, W]`` in [-1, 1] -> ``[H, W, 3]`` uint8; 1 channel is grey, more than 3 show the first 3."""
    if x.dim() != 3:
        raise ValueError(f"expected an image [C, H, W], got shape {tuple(x.shape)}")
    x = x.detach().float().cpu()
    x = x[:1].expand(3, -1, -1) if x.shape[0] < 3 else x[:3]
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)


def grid(rows: Sequence[Tensor], pad: int = 1, scale: int = 4) -> Tensor:
    """Tile ``rows`` (each ``[N, C, H, W]``, same H and W) into one ``[H', W', 3]`` uint8 image."""
    if not rows:
        raise ValueError("a grid needs at least one row")
    h, w = rows[0].shape[-2:]
    cols = max(r.shape[0] for r in rows)
    out = torch.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 64, dtype=torch.uint8)
    for i, row in enumerate(rows):
        for j, sample in enumerate(row):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            out[top : top + h, left : left + w] = to_image(sample)
    return out.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def save_grid(rows: Sequence[Tensor], path: Path, scale: int = 4) -> Path:
    """Write the grid of ``rows`` as a PNG (atomically) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.asarray(grid(rows, scale=scale))).save(tmp, format="PNG")
    tmp.replace(path)
    return path
