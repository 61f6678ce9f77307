"""``QwenImageGuidance``: true classifier-free guidance as ``QwenImagePipeline`` / ``QwenImageEditPipeline``
apply it, with their norm rescale.

``v = v_u + s (v_c - v_u)``, then each packed token (a 2x2 patch across every channel) rescaled to the norm
of the conditional velocity's token: ``v <- v |v_c|_token / |v|_token``. ``s`` is the pipelines'
``true_cfg_scale``; ``s <= 1`` is off (the plain conditional field, as the pipelines skip the negative
prompt there). Cond and uncond run in one batched call; the unconditional Cond is the field's own (the
negative prompt, with the source image kept for an edit).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fieldkit.backbones.packing import pack, unpack
from fieldkit.plugin_api import Cond, Guidance, VelocityField, cond_and_uncond


class QwenImageGuidance(Guidance):
    """``v = v_u + s (v_c - v_u)`` rescaled per 2x2 token to ``|v_c|``; off for ``s <= 1``."""

    def __init__(self, field: VelocityField, scale: float) -> None:
        super().__init__(field, scale if scale > 1 else 1.0)

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        field = self.fields[0]
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        if self.w == 1.0:
            return field(x, sigma, cond)
        v_c, v_u = (pack(v) for v in cond_and_uncond(field, x, sigma, cond))
        v = v_u + self.w * (v_c - v_u)
        v = v * (
            torch.linalg.vector_norm(v_c, dim=-1, keepdim=True)
            / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        )
        return unpack(v, x.shape[-2], x.shape[-1])
