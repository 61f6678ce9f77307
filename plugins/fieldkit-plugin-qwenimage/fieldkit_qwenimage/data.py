"""Data buckets of Qwen-Image prompts and edit pairs, encoded once by the pipelines' encoders and cached.

``qwenimage.prompts``: each row of a CSV / JSONL file is one prompt, ``template.format(**row)``, encoded as
``QwenImagePipeline`` encodes it (Qwen2.5-VL features, padded, with their mask); the negative prompt's are
the null values (what true CFG contrasts against).

``qwenimage.edits``: edit pairs (:mod:`fieldkit.backbones.pairs`), every source of one size. Each is
cached as ``QwenImageEditPipeline`` conditions on it when called with that one image: the source resized to
about one megapixel and VAE-encoded, the instruction and the negative prompt each encoded by Qwen2.5-VL
with the image shown (so the negative features are per row); targets (when every pair has one) as VAE
latents of the bucket's latent shape, the clean images of off-policy baselines.

Caches are safetensors files keyed by a fingerprint of the texts, the image files' bytes, the encoders'
files, the sequence length, the negative prompt and the dtype; a matching cache is read row by row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fieldkit.backbones.pairs import load_edit_pairs, pairs_cache, stacked_targets
from fieldkit.backbones.prompts import CachedBucket, PromptCache, cached
from fieldkit.backbones.prompts import Encoding as BaseEncoding
from fieldkit_qwenimage.field import pad_text

EDITS_FORMAT = "fieldkit-qwenimage.edits/1"
TEXT_ENCODER = ("text_encoder", "tokenizer")
EDIT_ENCODERS = ("text_encoder", "processor", "vae")
KEYS = ("text", "text_mask")
NEGATIVE_KEYS = ("negative_text", "negative_text_mask")
BATCH = 8
PROMPTS = PromptCache("qwenimage", "fieldkit-qwenimage.prompts/1", TEXT_ENCODER, KEYS, KEYS)


class Encoding(BaseEncoding):
    """How a bucket encodes (:class:`~fieldkit.backbones.prompts.Encoding`), with Qwen-Image's encoders."""

    encode_module = "fieldkit_qwenimage.encode"

    def features(self, pipe: Any, texts: list[str], images: list[Any] | None = None) -> list[Tensor]:
        """The features of ``texts`` (for an edit, each with its resized source image shown)."""
        from fieldkit_qwenimage.encode import prompt_features

        out: list[Tensor] = []
        for i in range(0, len(texts), BATCH):
            shown = None if images is None else images[i : i + BATCH]
            n = self.max_sequence_length
            out += prompt_features(pipe, texts[i : i + BATCH], max_sequence_length=n, images=shown)
        return out


def prompt_bucket(
    file: Path, enc: Encoding, *, template: str = "{prompt}", cache: Path | None = None
) -> CachedBucket:
    """T2I prompts of ``file`` encoded by the pipeline's Qwen2.5-VL (cached; re-encoded only when stale).

    ``cache`` defaults to ``FILE.qwenimage-features.safetensors`` beside the prompt file.
    """

    def encode(texts: list[str]) -> dict[str, Tensor]:
        text, mask = pad_text(enc.features(enc.encoders(edit=False), [*texts, enc.negative_prompt]))
        n, text = len(texts), text.to(enc.dtype)
        return {"text": text[:n], "text_mask": mask[:n], "null_text": text[n:], "null_text_mask": mask[n:]}

    return PROMPTS.bucket(file, enc, template, cache, encode)


def edit_bucket(
    pairs: Path, enc: Encoding, *, template: str = "{instruction}", cache: Path | None = None
) -> CachedBucket:
    """Edit pairs encoded by the encoders of the pipeline (a ``QwenImageEditPipeline`` folder), cached.

    ``cache`` defaults to ``FILE.qwenimage-features.safetensors`` beside a pair file, or
    ``FOLDER/qwenimage-features.safetensors`` inside a pair folder.
    """
    from fieldkit_qwenimage.encode import edit_image, image_latent

    edits = load_edit_pairs(pairs, template, enc, EDIT_ENCODERS)
    items, loaded = edits.items, edits.images

    def encode() -> dict[str, Tensor]:
        pipe = enc.encoders(edit=True)
        resized = [edit_image(pipe, loaded[p.source]) for p in items]
        prompts = enc.features(pipe, edits.texts, resized)
        negatives = enc.features(pipe, [enc.negative_prompt] * len(items), resized)
        text, mask = pad_text([*prompts, *negatives])
        n = len(items)
        tensors = {
            "text": text[:n].to(enc.dtype),
            "text_mask": mask[:n],
            "negative_text": text[n:].to(enc.dtype),
            "negative_text_mask": mask[n:],
            "source": torch.stack([image_latent(pipe, im) for im in resized]).to(enc.dtype),
        }
        if edits.targets:
            latents = [image_latent(pipe, loaded[p.target]) for p in items if p.target is not None]
            tensors["target"] = stacked_targets(latents, enc)
        return tensors

    path = pairs_cache(pairs, cache, "qwenimage-features.safetensors")
    path = cached(path, EDITS_FORMAT, edits.key, edits.texts, encode)
    return CachedBucket(path, enc.shape, (*KEYS, *NEGATIVE_KEYS, "source"), (), targets=edits.targets)
