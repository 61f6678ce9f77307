"""Sample grids as PNG: rows of samples (one row per field), images in [-1, 1] mapped to [0, 255].

A saved grid is labelled: each row's name (source / teacher / student ...) on its left, column numbers
above, and each column's caption (its prompt or instruction) below. The labels are also written beside the
PNG as JSON (``step-...-route.json``), so a report can show them as text; the JSON names its format
(:data:`LABELS_FORMAT`), so a grid fieldkit wrote is told apart from a user's files of the same name.
:func:`check_grid_path` refuses, before any work, an output that would overwrite anything else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from fieldkit.atomic import atomic_path, atomic_write
from fieldkit.errors import FieldkitError
from fieldkit.files import MiB, read_text
from fieldkit.owned import check_target

BACKGROUND = (32, 32, 32)
INK = (235, 235, 235)
FONT_SIZE = 12
LINE = FONT_SIZE + 4
MARGIN = 6
LABELS_FORMAT = "fieldkit.grid-labels/1"
MAX_LABELS = 16 * MiB  # far above the labels of 256 columns of long captions


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


def labelled_grid(
    rows: Sequence[Tensor],
    row_labels: Sequence[str] = (),
    captions: Sequence[str] = (),
    pad: int = 1,
    scale: int = 4,
) -> Image.Image:
    """:func:`grid` with ``row_labels`` on the left, column numbers on top and ``n: caption`` lines below."""
    if row_labels and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    tiles = Image.fromarray(np.asarray(grid(rows, pad=pad, scale=scale)))
    font = ImageFont.load_default(size=FONT_SIZE)
    measure = ImageDraw.Draw(tiles)
    left = max((int(measure.textlength(label, font=font)) for label in row_labels), default=0)
    left = left + 2 * MARGIN if left else 0
    top = LINE if captions else 0
    lines = [f"{j + 1}: {text}" for j, text in enumerate(captions)]
    width = max(
        [tiles.width + left, *(int(measure.textlength(line, font=font)) + 2 * MARGIN for line in lines)]
    )
    height = tiles.height + top + (len(lines) * LINE + MARGIN if lines else 0)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    canvas.paste(tiles, (left, top))
    draw = ImageDraw.Draw(canvas)
    cell_h, cell_w = (s * scale + pad * scale for s in rows[0].shape[-2:])
    for i, label in enumerate(row_labels):
        middle = top + pad * scale + i * cell_h + (cell_h - pad * scale) // 2
        draw.text((MARGIN, middle), label, fill=INK, font=font, anchor="lm")
    if captions:
        for j in range(len(captions)):
            centre = left + pad * scale + j * cell_w + (cell_w - pad * scale) // 2
            draw.text((centre, LINE // 2), str(j + 1), fill=INK, font=font, anchor="mm")
    for k, line in enumerate(lines):
        draw.text((MARGIN, top + tiles.height + MARGIN // 2 + k * LINE), line, fill=INK, font=font)
    return canvas


def save_grid(
    rows: Sequence[Tensor],
    path: Path,
    scale: int = 4,
    row_labels: Sequence[str] = (),
    captions: Sequence[str] = (),
) -> Path:
    """Write the labelled grid of ``rows`` as a PNG, and its labels as JSON beside it (both atomically)."""
    write_grid(labelled_grid(rows, row_labels, captions, scale=scale), path, row_labels, captions)
    return path


def labels_path(path: Path) -> Path:
    """Where the labels of the grid PNG ``path`` are written: beside it, as ``.json``."""
    return path.with_suffix(".json")


def write_grid(
    image: Image.Image, path: Path, row_labels: Sequence[str] = (), captions: Sequence[str] = ()
) -> None:
    """Write a grid ``image`` as a PNG at ``path`` and its labels as JSON beside it (both atomically)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    if row_labels or captions:
        labels = {"format": LABELS_FORMAT, "rows": list(row_labels), "captions": list(captions)}
        atomic_write(labels_path(path), json.dumps(labels, indent=1))


def is_grid_labels(data: Any) -> bool:
    """Whether ``data`` is the labels :func:`write_grid` writes: its format, rows and captions (lists of
    strings) and nothing else; labels written before the format was named hold exactly rows and captions."""
    if not isinstance(data, dict) or set(data) - {"format"} != {"rows", "captions"}:
        return False
    lists = (data["rows"], data["captions"])
    return data.get("format", LABELS_FORMAT) == LABELS_FORMAT and all(
        isinstance(items, list) and all(isinstance(item, str) for item in items) for items in lists
    )


def _ours(labels: Path) -> bool:
    """Whether the file ``labels`` holds a grid's labels that fieldkit wrote (a bounded, regular file)."""
    try:
        return is_grid_labels(json.loads(read_text(labels, MAX_LABELS, "grid labels")))
    except (FieldkitError, ValueError, RecursionError):
        return False


def check_grid_path(path: Path) -> Path:
    """Refuse, before any work, a grid output that would damage a file fieldkit did not write: ``path``
    must end in ``.png``; neither it nor its labels file may be a link, a device or a folder; an existing
    labels file must be a grid's labels, and an existing PNG is replaced only with its labels beside it
    (then the pair is a grid fieldkit wrote)."""
    check_target(path, "sample grid")  # a link, a device or a folder is refused
    if path.suffix.lower() != ".png":
        raise FieldkitError(
            f"{path}: a sample grid is a PNG, so its path must end in .png (its labels are written beside "
            "it as .json); nothing was written",
            hint=f"give a path such as {path.with_suffix('.png').name}",
        )
    labels = labels_path(path)
    check_target(labels, "grid labels")
    if labels.exists() and not _ours(labels):
        raise FieldkitError(
            f"{labels} exists and is not the labels of a grid fieldkit wrote; the grid's labels would "
            "replace it, so nothing was written",
            hint="choose another path for the grid with -o (or move that file away)",
        )
    if path.exists() and not labels.exists():
        raise FieldkitError(
            f"{path} exists and is not a grid fieldkit wrote (there are no grid labels {labels.name} "
            "beside it), so nothing was written",
            hint="choose another path for the grid with -o (or move that file away)",
        )
    return path
