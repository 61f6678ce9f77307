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

import torch
from torch import Tensor

from fieldkit.cond import Cond
from fieldkit.errors import FieldkitError
from fieldkit.models.adapters import SharedAdapterField, as_shared_field

#: The projections LoRA adapts by default: every attention projection of SD3's joint (and dual) attention,
#: the targets of diffusers' SD3 LoRA training script.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

#: SD3's time scale: the transformer embeds ``timestep = TIMESTEP_SCALE * sigma``.
TIMESTEP_SCALE = 1000.0


class SD3Field(SharedAdapterField):
    """``v = transformer(x, timestep = 1000 sigma, text, pooled)`` of one adapter of a shared transformer.

    ``adapter = None`` is the base model. ``lora_targets`` names the projections a LoRA student adapts.
    A deep copy (what fieldkit's student is made from) is a standalone field computing the same velocity:
    its own adapter merged into the copied weights, the adapters of the other fields sharing the base dropped.
    """

    lora_pipeline = "StableDiffusion3Pipeline"
    lora_targets = LORA_TARGETS
    backbone = "SD3"

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        for key in ("text", "pooled"):
            if key not in cond:
                raise FieldkitError(
                    f"the SD3 field needs cond[{key!r}] (prompt embeddings), got keys {sorted(cond)}",
                    hint="use the sd3.prompts data bucket, or pass prompt_embeds as 'text' and "
                    "pooled_prompt_embeds as 'pooled'",
                )
        self.activate()
        dtype = self.compute_dtype()
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        out = self.transformer(
            hidden_states=x.to(dtype),
            timestep=sigma * TIMESTEP_SCALE,
            encoder_hidden_states=cond["text"].to(dtype),
            pooled_projections=cond["pooled"].to(dtype),
            return_dict=False,
        )[0]
        return out.to(x.dtype)

    def sampling_sigmas(self, steps: int, shape: tuple[int, ...]) -> Tensor | None:
        """The ``steps + 1`` sigmas the pipeline samples ``shape`` latents with (``None``: no scheduler)."""
        from fieldkit_sd3.schedule import pipeline_sigmas

        if self.scheduler is None:
            return None
        return pipeline_sigmas(self.scheduler, steps, shape, self.transformer.config.patch_size)

    def compute_dtype(self) -> torch.dtype:
        """The dtype the transformer's inputs take: its patch embedding's weight dtype.

        diffusers' ``transformer.dtype`` walks every submodule (looking for layerwise-casting hooks) on each
        call: about 1 ms on a LoRA-wrapped tiny transformer, 14 calls a DanceOPD step, ~8% of the step
        (benchmarks/sd3.py). The patch embedding is what first sees ``x``; a hooked one defers to diffusers.
        """
        proj = getattr(getattr(self.transformer, "pos_embed", None), "proj", None)
        weight = getattr(proj, "weight", None)
        if weight is None or hasattr(proj, "_diffusers_hook") or not weight.is_floating_point():
            return self.transformer.dtype
        return weight.dtype


def as_sd3_field(field: object, what: str) -> SD3Field:
    """``field`` when it is an :class:`SD3Field`, else a FieldkitError naming ``what`` needed it."""
    return as_shared_field(field, SD3Field, what, "an sd3")
