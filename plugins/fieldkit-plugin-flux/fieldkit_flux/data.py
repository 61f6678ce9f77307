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

from fieldkit.backbones.pairs import digest_images, load_pair_images, pairs_cache, read_pairs
from fieldkit.backbones.prompts import CachedBucket, PromptCache, cached, fingerprint
from fieldkit.backbones.prompts import Encoding as BaseEncoding
from fieldkit.plugin_api import FieldkitError

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

    items = read_pairs(pairs, template)
    shape = enc.shape
    loaded = load_pair_images(items, (shape[-1] * 8, shape[-2] * 8))
    texts = [p.text for p in items]
    parts = enc.key(texts, [str(p.source) for p in items], auto_resize)
    key = digest_images(fingerprint(parts, enc.pipeline, (*TEXT_ENCODERS, "vae")), items).hexdigest()
    targets = items[0].target is not None

    def encode() -> dict[str, Tensor]:
        pipe = enc.encoders(edit=True)
        tensors = enc.texts(pipe, texts)
        sources = [image_latent(pipe, loaded[p.source], auto_resize=auto_resize) for p in items]
        tensors["source"] = torch.stack(sources).to(enc.dtype)
        if targets:
            latents = [image_latent(pipe, loaded[p.target], auto_resize=False) for p in items if p.target]
            tensors["target"] = torch.stack(latents).to(enc.dtype)
            if tuple(tensors["target"].shape[1:]) != tuple(shape):
                raise FieldkitError(
                    f"the VAE of {enc.pipeline} gives target latents {list(tensors['target'].shape[1:])}, "
                    f"not the bucket's shape {list(shape)}",
                    hint="set `shape` to the latent shape of your target images",
                )
        return tensors

    path = cached(pairs_cache(pairs, cache, "flux-features.safetensors"), EDITS_FORMAT, key, texts, encode)
    return CachedBucket(path, shape, (*KEYS, "source"), KEYS, targets=targets)
