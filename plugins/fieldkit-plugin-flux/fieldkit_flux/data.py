"""Data buckets of FLUX prompts and Kontext edit pairs, encoded once by the pipelines' encoders and cached.

``flux.prompts``: each row of a CSV / JSONL file is one prompt, ``template.format(**row)``, encoded as
``FluxPipeline`` encodes it (T5 features and CLIP pooled); the negative prompt's are the null values (what
true CFG contrasts against).

``flux.edits``: edit pairs (:mod:`fieldkit.backbones.pairs`); sources are cached as ``FluxKontextPipeline``
conditions on them (VAE latents of the image at the size the pipeline encodes it), every source of one size;
targets (when every pair has one) as VAE latents of the bucket's latent shape, the clean images of off-policy
baselines.

Caches are safetensors files keyed by a fingerprint of the texts, the image files' bytes, the encoders'
files, the sequence length, the negative prompt, the resizing and the dtype; a matching cache is read row by
row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fieldkit.backbones.pairs import load_edit_pairs, pairs_cache, stacked_targets
from fieldkit.backbones.prompts import CachedBucket, PromptCache, cached
from fieldkit.backbones.prompts import Encoding as BaseEncoding

EDITS_FORMAT = "fieldkit-flux.edits/1"
TEXT_ENCODERS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
KEYS = ("text", "pooled")
BATCH = 16
PROMPTS = PromptCache("flux", "fieldkit-flux.prompts/1", TEXT_ENCODERS, KEYS, KEYS)


class Encoding(BaseEncoding):
    """How a bucket encodes (:class:`~fieldkit.backbones.prompts.Encoding`), with FLUX's encoders."""

    encode_module = "fieldkit_flux.encode"

    def texts(self, pipe: Any, texts: list[str]) -> dict[str, Tensor]:
        """The features of ``texts`` and, as ``null_*``, of the negative prompt."""
        from fieldkit_flux.encode import prompt_features

        n = self.max_sequence_length
        parts = [
            prompt_features(pipe, texts[i : i + BATCH], max_sequence_length=n)
            for i in range(0, len(texts), BATCH)
        ]
        null_text, null_pooled = prompt_features(pipe, [self.negative_prompt], max_sequence_length=n)
        return {
            "text": torch.cat([p[0] for p in parts]).to(self.dtype),
            "pooled": torch.cat([p[1] for p in parts]).to(self.dtype),
            "null_text": null_text.to(self.dtype),
            "null_pooled": null_pooled.to(self.dtype),
        }


def prompt_bucket(
    file: Path, enc: Encoding, *, template: str = "{prompt}", cache: Path | None = None
) -> CachedBucket:
    """T2I prompts of ``file`` encoded by the pipeline's text encoders (cached; re-encoded only when stale).

    ``cache`` defaults to ``FILE.flux-features.safetensors`` beside the prompt file.
    """
    return PROMPTS.bucket(
        file, enc, template, cache, lambda texts: enc.texts(enc.encoders(edit=False), texts)
    )


def edit_bucket(
    pairs: Path,
    enc: Encoding,
    *,
    template: str = "{instruction}",
    cache: Path | None = None,
    auto_resize: bool = True,
) -> CachedBucket:
    """Edit pairs encoded by the encoders of the pipeline (a ``FluxKontextPipeline`` folder), cached.

    ``cache`` defaults to ``FILE.flux-features.safetensors`` beside a pair file, or
    ``FOLDER/flux-features.safetensors`` inside a pair folder.
    """
    from fieldkit_flux.encode import image_latent

    edits = load_edit_pairs(pairs, template, enc, (*TEXT_ENCODERS, "vae"), auto_resize)
    items, loaded = edits.items, edits.images

    def encode() -> dict[str, Tensor]:
        pipe = enc.encoders(edit=True)
        tensors = enc.texts(pipe, edits.texts)
        sources = [image_latent(pipe, loaded[p.source], auto_resize=auto_resize) for p in items]
        tensors["source"] = torch.stack(sources).to(enc.dtype)
        if edits.targets:
            latents = [image_latent(pipe, loaded[p.target], auto_resize=False) for p in items if p.target]
            tensors["target"] = stacked_targets(latents, enc)
        return tensors

    path = pairs_cache(pairs, cache, "flux-features.safetensors")
    path = cached(path, EDITS_FORMAT, edits.key, edits.texts, encode)
    return CachedBucket(path, enc.shape, (*KEYS, "source"), KEYS, targets=edits.targets)
