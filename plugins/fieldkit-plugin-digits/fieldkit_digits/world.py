"""The digits world: real handwritten digits (scikit-learn's 8x8 set) on 8 x 16 canvases of two sides.

A canvas is ``[1, 8, 16]`` in [-1, 1] (-1 is the background): the left side is columns 0-7, the right side
columns 8-15; a side holds one real digit or nothing (``BLANK``). The digits are split once, by seed, into a
train and a held-out set per class; teachers and students train on train digits, metrics use held-out ones.

Edits are exact functions of the source canvas:

- local (one side changes, the other stays pixel-identical): ``replace`` the digit on a side by another,
  ``remove`` it, ``add`` one to an empty side;
- global (the whole canvas changes, deterministically): ``invert`` (``-x``), ``bold`` (each side dilated by
  a 3 x 3 cross), ``mirror`` (left-right flip of the canvas), ``flip`` (upside down).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

BLANK = 10
SIDES = ("left", "right")
LOCAL_OPS = ("replace", "remove", "add")
GLOBAL_OPS = ("invert", "bold", "mirror", "flip")
SHAPE = (1, 8, 16)
SPLITS = ("train", "heldout", "validation", "test")


@lru_cache(maxsize=1)
def all_digits() -> tuple[Tensor, Tensor]:
    """Every digit of scikit-learn's set: images ``[1797, 8, 8]`` in [-1, 1] and labels ``[1797]``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32) / 8.0 - 1.0
    return images, torch.tensor(data.target, dtype=torch.long)


@lru_cache(maxsize=8)
def split_indices(seed: int = 0, heldout: float = 0.2) -> dict[str, Tensor]:
    """Indices of the train and held-out digits: per class, a ``heldout`` fraction drawn with ``seed``; the
    held-out digits of each class are halved into ``validation`` (settings are chosen there) and ``test``
    (what is reported), disjoint."""
    _, labels = all_digits()
    gen = torch.Generator().manual_seed(seed)
    parts: dict[str, list[Tensor]] = {name: [] for name in SPLITS}
    for c in range(10):
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_held = round(heldout * idx.numel())
        parts["heldout"].append(idx[:n_held])
        parts["validation"].append(idx[: n_held // 2])
        parts["test"].append(idx[n_held // 2 : n_held])
        parts["train"].append(idx[n_held:])
    return {name: torch.cat(p).sort().values for name, p in parts.items()}


class DigitPool:
    """The digits of one split, grouped by class, for drawing random instances of a class."""

    def __init__(self, split: str = "train", seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        images, labels = all_digits()
        idx = split_indices(seed)[split]
        self.split = split
        self.images = images[idx]
        self.labels = labels[idx]
        self.by_class = [(self.labels == c).nonzero().squeeze(1) for c in range(10)]

    def draw(self, classes: Tensor, generator: torch.Generator) -> Tensor:
        """One random instance ``[8, 8]`` per entry of ``classes`` (``BLANK`` gives an empty side)."""
        out = torch.full((classes.numel(), 8, 8), -1.0)
        u = torch.rand(classes.numel(), generator=generator)
        for i, c in enumerate(classes.tolist()):
            if c != BLANK:
                pool = self.by_class[c]
                out[i] = self.images[pool[int(u[i] * pool.numel())]]
        return out


def compose(left: Tensor, right: Tensor) -> Tensor:
    """Canvases ``[B, 1, 8, 16]`` from left and right sides ``[B, 8, 8]``."""
    return torch.cat([left, right], dim=-1).unsqueeze(1)


def side_of(canvas: Tensor, side: int) -> Tensor:
    """Side ``side`` (0 left, 1 right) of canvases ``[B, 1, 8, 16]``: ``[B, 1, 8, 8]``."""
    return canvas[..., 8 * side : 8 * side + 8]


def halves(canvas: Tensor) -> Tensor:
    """Both sides as a batch ``[2B, 1, 8, 8]``: rows ``[left_0, right_0, left_1, ...]``."""
    b = canvas.shape[0]
    return canvas.reshape(b, 1, 8, 2, 8).permute(0, 3, 1, 2, 4).reshape(2 * b, 1, 8, 8)


def side_mask(sides: Tensor) -> Tensor:
    """``[B, 1, 8, 16]``: 1 on the given side (0 left, 1 right) of each canvas, 0 elsewhere."""
    cols = torch.arange(16)
    return (
        (cols.div(8, rounding_mode="floor")[None] == sides[:, None])
        .float()[:, None, None, :]
        .expand(-1, 1, 8, 16)
        .clone()
    )


def dilate(canvas: Tensor) -> Tensor:
    """Each side dilated (grey-level max) by a 3 x 3 cross; the sides do not bleed into each other."""
    sides = halves(canvas)
    padded = F.pad(sides, (1, 1, 1, 1), value=-1.0)
    centre = padded[..., 1:-1, 1:-1]
    out = torch.stack(
        [centre, padded[..., :-2, 1:-1], padded[..., 2:, 1:-1], padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]]
    ).amax(0)
    b = canvas.shape[0]
    return out.reshape(b, 2, 1, 8, 8).permute(0, 2, 3, 1, 4).reshape(b, 1, 8, 16)


def global_edit(canvas: Tensor, op: str) -> Tensor:
    """The exact result of global edit ``op`` on canvases ``[B, 1, 8, 16]``."""
    if op == "invert":
        return -canvas
    if op == "bold":
        return dilate(canvas)
    if op == "mirror":
        return canvas.flip(-1)
    if op == "flip":
        return canvas.flip(-2)
    raise ValueError(f"unknown global edit {op!r}; known: {', '.join(GLOBAL_OPS)}")


def global_edits(canvas: Tensor, ops: Tensor) -> Tensor:
    """Per-row global edits: ``ops[i]`` indexes :data:`GLOBAL_OPS`."""
    out = canvas.clone()
    for k, op in enumerate(GLOBAL_OPS):
        rows = (ops == k).nonzero().squeeze(1)
        if rows.numel():
            out[rows] = global_edit(canvas[rows], op)
    return out
