"""``FluxField``: a diffusers ``FluxTransformer2DModel`` as a fieldkit velocity field, T2I or Kontext edit.

The convention boundary, in one place. FLUX predicts ``noise - data`` (fieldkit's ``v``) and takes the
timestep as the pipelines pass it, ``(1000 sigma) / 1000`` in the latents' dtype. Latents are ``[B, C, H, W]``
here and 2x2-packed tokens ``[B, (H / 2)(W / 2), 4C]`` there, with position ids ``(0, row, col)`` and text ids
0. FLUX.1-dev's distilled guidance is an input of the transformer (``guidance``, a field parameter, the
pipelines' ``guidance_scale``); true CFG over a negative prompt is fieldkit's ``guidance`` operator.

The :class:`~fieldkit.Cond` carries the T5 features ``text`` ``[B, T, D]`` (padded to the bucket's
``max_sequence_length``, as the pipelines pad them; FLUX has no text mask) and the CLIP pooled ``pooled``
``[B, P]``. A batch with a ``source`` ``[B, C, Hs, Ws]`` (the clean latent of the image to edit) is a Kontext
edit: the source's tokens follow the noisy ones with position ids ``(1, row, col)``, and only the noisy
tokens' output is the velocity, as ``FluxKontextPipeline`` runs it. Only ``text`` and ``pooled`` have null
values (the negative prompt), so guidance's unconditional branch keeps the source.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fieldkit.backbones.field import JOINT_ATTENTION_TARGETS, PackedEditField
from fieldkit.backbones.packing import pack_latents, unpack_latents
from fieldkit.backbones.schedule import pipeline_sigmas
from fieldkit.plugin_api import AdapterSwitch, Cond

#: The projections a LoRA adapts by default: attention (both streams) and the feed-forwards, the layers
#: that community FLUX LoRAs train.
LORA_TARGETS = (
    *JOINT_ATTENTION_TARGETS,
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "proj_mlp",
    "proj_out",
)
#: The scale of the scheduler's timesteps (``timestep = 1000 sigma``), from which the pipelines derive ``t``.
TIMESTEPS = 1000.0


def position_ids(h: int, w: int, frame: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The ``(frame, row, col)`` ids ``[(h / 2)(w / 2), 3]`` of a packed ``h x w`` latent."""
    rows = torch.arange(h // 2, device=device).repeat_interleave(w // 2)
    cols = torch.arange(w // 2, device=device).repeat(h // 2)
    return torch.stack([torch.full_like(rows, frame), rows, cols], dim=1).to(dtype)


def text_cond(text: Tensor, pooled: Tensor, null_text: Tensor, null_pooled: Tensor, **extra: Tensor) -> Cond:
    """A Cond of prompt features whose null is the negative prompt's (``null_*``: one row each)."""
    return Cond({"text": text, "pooled": pooled, **extra}, nulls={"text": null_text, "pooled": null_pooled})


class FluxField(PackedEditField):
    """``v = transformer(pack(x), t = sigma, guidance, text, pooled)``; with ``source`` in the Cond, the
    Kontext call on ``[pack(x), pack(source)]`` whose first ``(H / 2)(W / 2)`` tokens are the velocity.

    ``guidance`` is the distilled-guidance input of guidance-embedding transformers (FLUX.1-dev, Kontext):
    the pipelines' ``guidance_scale``; ignored by a transformer without it (FLUX.1-schnell). ``edit`` fields
    refuse a batch without a source image.
    """

    backbone = "FLUX"
    model_class = "FluxTransformer2DModel"
    lora_pipeline = "FluxPipeline"
    lora_targets = LORA_TARGETS
    lora_rank = 64
    cond_keys = ("text", "pooled")
    cond_hint = "use a flux.prompts or flux.edits data bucket (or fieldkit_flux.field.text_cond)"
    load_hint = "point `path` at a FluxPipeline / FluxKontextPipeline folder or a transformer folder"
    edit_error = (
        "this FLUX Kontext field needs cond['source'] (the latent of the image to edit)",
        "route it to a flux.edits data bucket",
    )

    def __init__(
        self,
        transformer: nn.Module,
        switch: AdapterSwitch | None = None,
        adapter: str | None = None,
        *,
        guidance: float = 3.5,
        edit: bool = False,
        scheduler: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(transformer, switch, adapter, edit=edit, scheduler=scheduler)
        self.guidance = float(guidance)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "guidance": self.guidance}

    def velocity(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        source = cond["source"] if self.editing(cond) else None
        dtype = self.compute_dtype()
        tokens = pack_latents(x, source, "the FLUX latent", self.backbone, dtype)
        b, _, h, w = x.shape
        ids = position_ids(h, w, 0, x.device, dtype)
        if source is not None:
            ids = torch.cat([ids, position_ids(source.shape[-2], source.shape[-1], 1, x.device, dtype)])
        text = cond["text"].to(dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.guidance, device=x.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=tokens,
            timestep=(sigma * TIMESTEPS).to(dtype) / TIMESTEPS,
            guidance=guidance,
            pooled_projections=cond["pooled"].to(dtype),
            encoder_hidden_states=text,
            txt_ids=text.new_zeros(text.shape[1], 3),
            img_ids=ids,
            return_dict=False,
        )[0]
        return unpack_latents(out, x)

    def input_layer(self) -> nn.Module | None:
        """The token embedding, the first layer to see ``x``."""
        return getattr(self.transformer, "x_embedder", None)

    def sampling_sigmas(self, steps: int, shape: tuple[int, ...]) -> Tensor | None:
        """The pipeline's sigmas for ``shape`` ``[C, H, W]`` latents: FLUX's transformer has patch size 1, and
        its dynamic shift counts the pipeline's 2x2-packed ``(H / 2)(W / 2)`` tokens."""
        if self.scheduler is None:
            return None
        tokens = (shape[-2] // 2) * (shape[-1] // 2)
        return pipeline_sigmas(self.scheduler, steps, tokens, self.base_sigmas(steps))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, guidance={self.guidance}"
