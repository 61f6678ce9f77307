"""``SD3Field``: a diffusers ``SD3Transformer2DModel`` as a fieldkit velocity field.

The convention boundary, in one place: fieldkit's ``sigma`` in [0, 1] (1 = noise) becomes SD3's
``timestep = 1000 sigma`` (1-D, ``[B]``), and SD3 predicts ``noise - data``, which is fieldkit's
``v = eps - x0`` as it is. Conditions read from the :class:`~fieldkit.Cond`: ``text`` ``[B, T, D]`` (the
pipeline's ``prompt_embeds``) and ``pooled`` ``[B, P]`` (``pooled_prompt_embeds``); their null values (the
empty prompt's embeddings) are what classifier-free guidance contrasts against.

Several fields can share one transformer: the base alone, and one field per LoRA adapter loaded into it
(:meth:`SD3Field.with_adapter`). A call switches the shared transformer to its field's adapter, so N
capabilities cost one base plus N adapters in memory instead of N full models.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fieldkit.backbones.field import JOINT_ATTENTION_TARGETS, SharedAdapterField
from fieldkit.plugin_api import Cond, FieldkitError

#: The projections LoRA adapts by default: every attention projection of SD3's joint (and dual) attention,
#: the targets of diffusers' SD3 LoRA training script.
LORA_TARGETS = JOINT_ATTENTION_TARGETS

#: SD3's time scale: the transformer embeds ``timestep = TIMESTEP_SCALE * sigma``.
TIMESTEP_SCALE = 1000.0


class SD3Field(SharedAdapterField):
    """``v = transformer(x, timestep = 1000 sigma, text, pooled)`` of one adapter of a shared transformer.

    ``adapter = None`` is the base model. A deep copy (what fieldkit's student is made from) is a standalone
    field computing the same velocity: its own adapter merged into the copied weights, the adapters of the
    other fields sharing the base dropped.
    """

    backbone = "SD3"
    model_class = "SD3Transformer2DModel"
    lora_pipeline = "StableDiffusion3Pipeline"
    lora_targets = LORA_TARGETS
    cond_keys = ("text", "pooled")
    cond_hint = (
        "use the sd3.prompts data bucket, or pass prompt_embeds as 'text' and pooled_prompt_embeds "
        "as 'pooled'"
    )
    load_hint = "point `path` at an SD3 / SD3.5 pipeline folder or a transformer folder saved by diffusers"
    traceable = True  # its forward branches on shapes only (tests/test_sd3_traced.py)

    @classmethod
    def build_transformer(
        cls, config: dict[str, Any], seed: int = 0, dtype: torch.dtype | None = None
    ) -> Any:
        """A freshly initialised transformer from config keys, seeded; the text width is checked first."""
        hidden = config.get("num_attention_heads", 18) * config.get("attention_head_dim", 64)
        if config.get("caption_projection_dim", 1152) != hidden:
            raise FieldkitError(
                f"caption_projection_dim must equal num_attention_heads x attention_head_dim = {hidden}",
                hint="SD3 adds the projected text tokens to the image stream of that width",
            )
        return super().build_transformer(config, seed, dtype)

    def velocity(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        dtype = self.compute_dtype()
        out: Tensor = self.run_transformer(
            hidden_states=x.to(dtype),
            timestep=sigma * TIMESTEP_SCALE,
            encoder_hidden_states=cond["text"].to(dtype),
            pooled_projections=cond["pooled"].to(dtype),
            return_dict=False,
        )[0]
        return out.to(x.dtype)

    def input_layer(self) -> nn.Module | None:
        """The patch embedding, the first layer to see ``x``."""
        return getattr(getattr(self.transformer, "pos_embed", None), "proj", None)
