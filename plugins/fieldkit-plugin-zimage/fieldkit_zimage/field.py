"""``ZImageField``: a diffusers ``ZImageTransformer2DModel`` as a fieldkit velocity field, T2I or edit.

The convention boundary, in one place. fieldkit's ``sigma`` (1 = noise) becomes Z-Image's ``t = 1 - sigma``
(0 = noise), computed as the pipelines compute it from the scheduler's timesteps, ``(1000 - 1000 sigma) /
1000``; Z-Image predicts ``data - noise``, so fieldkit's ``v = eps - x0`` is its negation. Latents are
``[B, C, H, W]`` here and a list of ``[C, 1, H, W]`` there.

The :class:`~fieldkit.Cond` carries the text as ``text`` ``[B, T, D]`` (the Qwen3 features of a prompt's
segments, packed one after the other and zero-padded) with ``text_len`` ``[B, S]`` (each segment's length;
``S = 1`` for ``ZImagePipeline``'s prompt, 3 for ``ZImageOmniPipeline``'s prompt around one image).
A batch with a ``source`` ``[B, C, H, W]`` (the clean latent of the image to edit) and ``siglip``
``[B, h, w, F]`` (its SigLIP2 features) is an edit: the transformer runs as ``ZImageOmniPipeline`` runs it, on
``[source, x]`` with noise mask ``[0, 1]``. Only ``text`` and ``text_len`` have null values (the negative
prompt), so the unconditional branch of guidance keeps the source latent and its SigLIP features, as the
pipeline's does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fieldkit.backbones.field import EditField
from fieldkit.plugin_api import Cond, FieldkitError

#: The projections a LoRA adapts by default: attention and the SwiGLU feed-forward (the paper's targets).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3")
#: The scale of the scheduler's timesteps (``timestep = 1000 sigma``), from which the pipelines derive ``t``.
TIMESTEPS = 1000.0


def pack_text(segments: list[list[Tensor]], length: int | None = None) -> tuple[Tensor, Tensor]:
    """``(text [B, T, D], text_len [B, S])`` from per-sample lists of ``S`` segment features ``[L_s, D]``
    (zero-padded to ``T = length``, default: the longest sample)."""
    counts = {len(s) for s in segments}
    if len(counts) != 1:
        raise FieldkitError(f"every sample needs the same number of text segments, got {sorted(counts)}")
    lens = torch.tensor([[seg.shape[0] for seg in s] for s in segments], dtype=torch.long)
    total = int(lens.sum(1).max())
    length = total if length is None else length
    if total > length:
        raise FieldkitError(f"text of {total} tokens does not fit the padded length {length}")
    first = segments[0][0]
    text = first.new_zeros((len(segments), length, first.shape[-1]))
    for row, s in enumerate(segments):
        joined = torch.cat(s)
        text[row, : joined.shape[0]] = joined
    return text, lens


def unpack_text(text: Tensor, text_len: Tensor) -> list[list[Tensor]]:
    """The per-sample segment lists that :func:`pack_text` packed."""
    out = []
    for row, lens in zip(text, text_len.tolist(), strict=True):
        out.append(list(row[: sum(lens)].split(lens)))
    return out


def text_cond(
    prompts: list[list[Tensor]], negative: list[Tensor], length: int | None = None, **extra: Tensor
) -> Cond:
    """A Cond of packed prompt features whose null is the negative prompt's (``negative``: its segments)."""
    if length is None:
        length = max(sum(seg.shape[0] for seg in s) for s in [*prompts, negative])
    text, text_len = pack_text(prompts, length)
    null_text, null_len = pack_text([negative], length)
    return Cond(
        {"text": text, "text_len": text_len, **extra}, nulls={"text": null_text, "text_len": null_len}
    )


class ZImageField(EditField):
    """``v = -transformer(x, t = 1 - sigma, text)``; with ``source`` and ``siglip`` in the Cond, the Omni
    call ``-transformer([source, x], t, text, siglip, noise mask [0, 1])``.

    ``edit`` fields refuse a batch without a source image.
    """

    backbone = "Z-Image"
    model_class = "ZImageTransformer2DModel"
    lora_pipeline = "ZImagePipeline"
    lora_targets = LORA_TARGETS
    lora_rank = 128  # the paper's student rank
    cond_keys = ("text", "text_len")
    cond_hint = "use a zimage.prompts or zimage.edits data bucket (or field.text_cond)"
    load_hint = "point `path` at a ZImagePipeline / ZImageOmniPipeline folder or a transformer folder"
    edit_error = (
        "this Z-Image edit field needs cond['source'] and cond['siglip'] (the image to edit)",
        "route it to a zimage.edits data bucket",
    )

    def check_edit(self) -> None:
        if getattr(self.transformer, "siglip_embedder", None) is None:
            raise FieldkitError(
                "an edit field needs a Z-Image transformer with SigLIP input (siglip_feat_dim unset)",
                hint="load the transformer of a ZImageOmniPipeline folder",
            )

    def velocity(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        editing = self.editing(cond)
        dtype = self.compute_dtype()
        # t stays float32 whatever the model's dtype, as in the pipelines (bfloat16 would round 1000 t)
        t = ((TIMESTEPS - sigma * TIMESTEPS) / TIMESTEPS).float()
        latents = list(x.to(dtype).unsqueeze(2).unbind(0))
        text = [[seg.to(dtype) for seg in segs] for segs in unpack_text(cond["text"], cond["text_len"])]
        if editing:
            if "siglip" not in cond:
                raise FieldkitError("an edit batch needs cond['siglip'] beside cond['source']")
            if getattr(self.transformer, "siglip_embedder", None) is None:
                raise FieldkitError(  # the transformer would silently drop the SigLIP features
                    "an edit batch reached a Z-Image transformer without SigLIP input",
                    hint="make the student (and edit teachers) from a ZImageOmniPipeline's transformer",
                )
            sources = cond["source"].to(dtype).unsqueeze(2)
            out = self.transformer(
                x=[[src, lat] for src, lat in zip(sources, latents, strict=True)],
                t=t,
                cap_feats=text,
                siglip_feats=[[sig, None] for sig in cond["siglip"].to(dtype)],
                image_noise_mask=[[0, 1] for _ in latents],
                return_dict=False,
            )[0]
        else:
            if cond["text_len"].shape[1] != 1:
                raise FieldkitError(
                    f"a T2I batch has one text segment per prompt, got {cond['text_len'].shape[1]}",
                    hint="edit prompts (3 segments around the image) need cond['source'] and cond['siglip']",
                )
            out = self.transformer(latents, t, [segs[0] for segs in text], return_dict=False)[0]
        return -torch.stack([o.to(x.dtype) for o in out]).squeeze(2)

    def input_layer(self) -> nn.Module | None:
        """The patch embedding, the first layer to see ``x``."""
        embedders = getattr(self.transformer, "all_x_embedder", None)
        return next(iter(embedders.values()), None) if embedders else None

    def base_sigmas(self, steps: int) -> list[float]:
        """``linspace(1, 1/steps, steps)``, what both pipelines hand the scheduler."""
        from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

        return list(get_default_z_image_sigmas(steps))
