"""2x2-patch token packing, as the FLUX and Qwen-Image pipelines pack latents before their transformers."""

from __future__ import annotations

import torch
from torch import Tensor

from fieldkit.errors import FieldkitError


def pack(x: Tensor) -> Tensor:
    """Latents ``[B, C, H, W]`` as tokens ``[B, (H / 2)(W / 2), 4C]``: row-major 2x2 patches, each token its
    patch's channels then its 2x2 positions."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: Tensor, h: int, w: int) -> Tensor:
    """The inverse of :func:`pack`: tokens ``[B, (h / 2)(w / 2), 4C]`` as latents ``[B, C, h, w]``."""
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def check_packable(x: Tensor, what: str, backbone: str) -> None:
    """A FieldkitError unless ``x`` is ``[B, C, H, W]`` with even ``H`` and ``W``."""
    if x.dim() != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
        raise FieldkitError(
            f"{what} must be [B, C, H, W] with even H and W ({backbone} packs 2x2 patches), got "
            f"{list(x.shape)}",
            hint="image sizes must be multiples of 16 pixels",
        )


def pack_latents(x: Tensor, source: Tensor | None, what: str, backbone: str, dtype: torch.dtype) -> Tensor:
    """``x`` (checked as ``what``) in ``dtype`` as tokens, then, for an edit, the tokens of ``source`` (the
    latent of the image to edit, checked as ``cond['source']``) after them."""
    check_packable(x, what, backbone)
    tokens = pack(x.to(dtype))
    if source is not None:
        check_packable(source, "cond['source']", backbone)
        tokens = torch.cat([tokens, pack(source.to(dtype))], dim=1)
    return tokens


def unpack_latents(out: Tensor, x: Tensor) -> Tensor:
    """The latents of ``x``'s tokens (the first ``(H / 2)(W / 2)`` of ``out``), in ``x``'s shape and dtype."""
    h, w = x.shape[-2:]
    return unpack(out[:, : (h // 2) * (w // 2)], h, w).to(x.dtype)
