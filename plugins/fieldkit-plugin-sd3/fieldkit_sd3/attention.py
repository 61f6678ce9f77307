"""SD3's joint attention through :func:`fieldkit.attention.attention`.

diffusers' ``JointAttnProcessor2_0`` calls ``F.scaled_dot_product_attention`` itself, so neither diffusers'
attention backends nor fieldkit's reach SD3. :class:`FieldkitJointAttnProcessor` computes the same joint
attention, ``softmax(q k^T / sqrt(d)) v`` over ``[image tokens, text tokens]`` (or image tokens alone in
SD3.5's second, dual attention), with the kernel that ``fieldkit.attention`` picks: ``use_backend``, a
graph's ``run.attention`` and ``FIELDKIT_ATTENTION`` all apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fieldkit.plugin_api import attention

if TYPE_CHECKING:
    from diffusers import SD3Transformer2DModel
    from diffusers.models.attention_processor import Attention


class FieldkitJointAttnProcessor:
    """A diffusers attention processor for SD3 / SD3.5 ``Attention`` layers (joint and self attention).

    In a ``context_pre_only`` layer (the last joint block, whose block keeps only the image stream) only the
    image tokens query: ``softmax(q_image [k_image, k_text]^T / sqrt(d)) [v_image, v_text]``; the text
    queries' rows, which that block discards, are not computed and the text output is ``None``. The image
    output is the same, bit for bit, as with every token querying."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        batch, image_tokens = hidden_states.shape[0], hidden_states.shape[1]

        def heads(t: Tensor) -> Tensor:
            return t.view(batch, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = (
            heads(attn.to_q(hidden_states)),
            heads(attn.to_k(hidden_states)),
            heads(attn.to_v(hidden_states)),
        )
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if encoder_hidden_states is not None:
            ck = heads(attn.add_k_proj(encoder_hidden_states))
            cv = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            k, v = torch.cat([k, ck], dim=2), torch.cat([v, cv], dim=2)
            if not attn.context_pre_only:
                cq = heads(attn.add_q_proj(encoder_hidden_states))
                if attn.norm_added_q is not None:
                    cq = attn.norm_added_q(cq)
                q = torch.cat([q, cq], dim=2)
        out = attention(q, k, v).transpose(1, 2).flatten(2).to(q.dtype)
        image: Tensor = attn.to_out[1](attn.to_out[0](out[:, :image_tokens]))
        if encoder_hidden_states is None:
            return image
        if attn.context_pre_only:
            return image, None
        return image, attn.to_add_out(out[:, image_tokens:])


def use_fieldkit_attention(transformer: SD3Transformer2DModel) -> None:
    """Set :class:`FieldkitJointAttnProcessor` on every attention layer of an SD3 transformer.

    Refuses a layer whose scale is not ``1 / sqrt(head_dim)`` (fieldkit's kernels use that scale) or whose
    processor is not SD3's stock joint processor (an IP-adapter's, say), rather than silently changing it.
    """
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    for name, proc in transformer.attn_processors.items():
        if not isinstance(proc, JointAttnProcessor2_0 | FieldkitJointAttnProcessor):
            raise ValueError(
                f"{name} uses {type(proc).__name__}; fieldkit's processor replaces only SD3's own"
            )
    for name, module in transformer.named_modules():
        scale, heads, inner = getattr(module, "scale", None), getattr(module, "heads", None), None
        if scale is not None and heads and hasattr(module, "to_q"):
            inner = module.to_q.out_features // heads
            if abs(scale - inner**-0.5) > 1e-9:
                raise ValueError(f"{name} scales attention by {scale}, not 1/sqrt({inner})")
    transformer.set_attn_processor(FieldkitJointAttnProcessor())
