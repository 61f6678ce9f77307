"""``QwenImageField``: a diffusers ``QwenImageTransformer2DModel`` as a fieldkit velocity field, T2I or edit.

The convention boundary, in one place. Qwen-Image predicts ``noise - data`` (fieldkit's ``v``) and takes the
timestep as the pipelines pass it, ``(1000 sigma) / 1000`` in the latents' dtype. Latents are
``[B, C, H, W]`` here and 2x2-packed tokens ``[B, (H / 2)(W / 2), 4C]`` there, with the image shapes
``(1, H / 2, W / 2)`` from which the transformer builds its positions.

The :class:`~fieldkit.Cond` carries the Qwen2.5-VL features ``text`` ``[B, T, D]`` (the last hidden states
after the pipeline's template prefix, zero-padded) with ``text_mask`` ``[B, T]`` (1 on real tokens). A batch
with a ``source`` ``[B, C, Hs, Ws]`` (the clean latent of the image to edit, at the size the edit pipeline
encodes it) is an edit: the source's tokens follow the noisy ones as a second image, and only the noisy
tokens' output is the velocity, as ``QwenImageEditPipeline`` runs it (its instruction features already saw
the image through Qwen2.5-VL). Only the text has a null value (the negative prompt's features, encoded with
the same image for an edit), so guidance's unconditional branch keeps the source.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fieldkit.backbones.field import JOINT_ATTENTION_TARGETS, PackedEditField
from fieldkit.backbones.packing import pack_latents, unpack_latents
from fieldkit.plugin_api import Cond, FieldkitError

#: The projections a LoRA adapts by default: attention (both streams) and both feed-forwards, the layers
#: that community Qwen-Image LoRAs train.
LORA_TARGETS = (
    *JOINT_ATTENTION_TARGETS,
    "img_mlp.net.0.proj",
    "img_mlp.net.2",
    "txt_mlp.net.0.proj",
    "txt_mlp.net.2",
)
#: The scale of the scheduler's timesteps (``timestep = 1000 sigma``), from which the pipelines derive ``t``.
TIMESTEPS = 1000.0


def pad_text(features: list[Tensor], length: int | None = None) -> tuple[Tensor, Tensor]:
    """``(text [N, T, D], text_mask [N, T])`` from per-prompt features ``[L_i, D]`` zero-padded to ``T =
    length`` (default: the longest)."""
    longest = max(f.shape[0] for f in features)
    length = longest if length is None else length
    if longest > length:
        raise FieldkitError(f"text of {longest} tokens does not fit the padded length {length}")
    text = features[0].new_zeros((len(features), length, features[0].shape[-1]))
    mask = torch.zeros(len(features), length, dtype=torch.long)
    for row, f in enumerate(features):
        text[row, : f.shape[0]] = f
        mask[row, : f.shape[0]] = 1
    return text, mask


def text_cond(prompts: list[Tensor], negative: Tensor | list[Tensor], **extra: Tensor) -> Cond:
    """A Cond of padded prompt features and the negative prompt's: one ``[L, D]`` for every row (the null
    value of the text), or one per row (``negative_text``: an edit's negative prompt is encoded with the
    row's image), all padded to one length."""
    rows = negative if isinstance(negative, list) else [negative]
    text, mask = pad_text([*prompts, *rows])
    n = len(prompts)
    data = {"text": text[:n], "text_mask": mask[:n], **extra}
    if isinstance(negative, list):
        return Cond(data, negative_text=text[n:], negative_text_mask=mask[n:])
    return Cond(data, nulls={"text": text[n:], "text_mask": mask[n:]})


class QwenImageField(PackedEditField):
    """``v = transformer(pack(x), t = sigma, text, text_mask)``; with ``source`` in the Cond, the edit call
    on ``[pack(x), pack(source)]`` whose first ``(H / 2)(W / 2)`` tokens are the velocity.

    ``edit`` fields refuse a batch without a source image.
    """

    backbone = "Qwen-Image"
    model_class = "QwenImageTransformer2DModel"
    lora_pipeline = "QwenImagePipeline"
    lora_targets = LORA_TARGETS
    lora_rank = 64
    cond_keys = ("text", "text_mask")
    cond_hint = (
        "use a qwenimage.prompts or qwenimage.edits data bucket (or fieldkit_qwenimage.field.text_cond)"
    )
    load_hint = "point `path` at a QwenImagePipeline / QwenImageEditPipeline folder or a transformer folder"
    edit_error = (
        "this Qwen-Image edit field needs cond['source'] (the latent of the image to edit)",
        "route it to a qwenimage.edits data bucket",
    )

    def uncond(self, cond: Cond) -> Cond:
        """The negative prompt in place of the prompt: the row's own (``negative_text``) when the batch
        carries one, else the text's null value. The source image is kept."""
        if "negative_text" in cond:
            return cond.replace(text=cond["negative_text"], text_mask=cond["negative_text_mask"])
        return cond.uncond()

    def velocity(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        source = cond["source"] if self.editing(cond) else None
        dtype = self.compute_dtype()
        tokens = pack_latents(x, source, "the Qwen-Image latent", self.backbone, dtype)
        b, _, h, w = x.shape
        shapes = [(1, h // 2, w // 2)]
        if source is not None:
            shapes.append((1, source.shape[-2] // 2, source.shape[-1] // 2))
        out = self.transformer(
            hidden_states=tokens,
            timestep=(sigma * TIMESTEPS).to(dtype) / TIMESTEPS,
            encoder_hidden_states=cond["text"].to(dtype),
            encoder_hidden_states_mask=cond["text_mask"],
            img_shapes=[shapes] * b,
            return_dict=False,
        )[0]
        return unpack_latents(out, x)

    def input_layer(self) -> nn.Module | None:
        """The token embedding, the first layer to see ``x``."""
        return getattr(self.transformer, "img_in", None)
