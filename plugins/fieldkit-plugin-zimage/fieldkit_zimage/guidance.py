"""``ZImageGuidance``: classifier-free guidance as ``ZImagePipeline`` / ``ZImageOmniPipeline`` apply it.

With the pipelines' ``guidance_scale`` ``s``: ``v = v_c + s (v_c - v_u)``, fieldkit's guidance with
``w = 1 + s``. ``cfg_normalization = c > 0`` caps each sample's guided velocity at ``c ||v_c||``;
``cfg_truncation = tau`` turns guidance off (``v = v_c``) where ``1 - sigma > tau``. Cond and uncond run in
one batched call; the unconditional Cond is the field's own (for Z-Image: the negative prompt, with the
source image and its SigLIP features kept).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fieldkit.plugin_api import Cond, Guidance, VelocityField, cond_and_uncond


class ZImageGuidance(Guidance):
    """``v = v_c + s (v_c - v_u)``, capped at ``c ||v_c||`` when ``c > 0``, off where ``1 - sigma > tau``."""

    def __init__(
        self, field: VelocityField, scale: float, normalization: float = 0.0, truncation: float = 1.0
    ) -> None:
        super().__init__(field, 1.0 + scale if scale > 0 else 1.0)
        self.scale = float(scale) if scale > 0 else 0.0
        self.normalization = float(normalization)
        self.truncation = float(truncation)

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        field = self.fields[0]
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        guided = (1000 - sigma * 1000) / 1000 <= self.truncation  # as the pipelines test their timesteps
        if self.w == 1.0 or not bool(guided.any()):
            return field(x, sigma, cond)
        v_c, v_u = cond_and_uncond(field, x, sigma, cond)
        v = v_c + self.scale * (v_c - v_u)
        if self.normalization > 0:
            dims = tuple(range(1, x.dim()))
            cap = self.normalization * torch.linalg.vector_norm(v_c, dim=dims, keepdim=True)
            norm = torch.linalg.vector_norm(v, dim=dims, keepdim=True)
            v = torch.where(norm > cap, v * (cap / norm), v)
        return torch.where(guided.reshape(-1, *([1] * (x.dim() - 1))), v, v_c)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, normalization={self.normalization}, truncation={self.truncation}"
