"""Data buckets of Z-Image prompts and edit pairs, encoded once by the pipelines' own encoders and cached.

``zimage.prompts``: each row of a CSV / JSONL file is one prompt, ``template.format(**row)``, encoded as
``ZImagePipeline`` encodes it; the negative prompt is the null value of the text (what guidance contrasts).

``zimage.edits``: each pair is a source image, an instruction and, optionally, a target image, read from a
CSV / JSONL file (columns ``source``, ``instruction``, ``target``; image paths relative to the file) or from a
folder (``NAME.png`` with its instruction in ``NAME.txt`` and an optional ``NAME.target.png``). Sources are
cached as ``ZImageOmniPipeline`` conditions on them: VAE latents and SigLIP2 features, with the instruction
encoded in the three segments around one image; targets (when every pair has one) as VAE latents, the clean
images of off-policy baselines. Every image must exist, decode, and have the pixel size of the bucket's
latent shape: anything else is one error naming the file, never a silent skip.

Caches are safetensors files keyed by a fingerprint of the texts, the image files' bytes, the encoders'
files, the sequence length, the negative prompt and the dtype; a matching cache is read row by row.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fieldkit.backbones.pairs import load_image, read_pairs
from fieldkit.backbones.prompts import CachedBucket, PromptCache, cached, fingerprint
from fieldkit.backbones.prompts import Encoding as BaseEncoding
from fieldkit.plugin_api import FieldkitError
from fieldkit_zimage.field import pack_text

EDITS_FORMAT = "fieldkit-zimage.edits/1"
TEXT_ENCODER = ("text_encoder", "tokenizer")
IMAGE_ENCODERS = ("vae", "siglip", "siglip_processor")
BATCH = 16
#: The keys whose null values (the negative prompt's) the caches hold: what guidance contrasts against.
NULLS = ("text", "text_len")
PROMPTS = PromptCache("zimage", "fieldkit-zimage.prompts/1", TEXT_ENCODER, ("text", "text_len"), NULLS)


def _packed(features: list[list[Tensor]], negative: list[Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    text, text_len = pack_text([*features, negative])
    n = len(features)
    return {
        "text": text[:n].to(dtype),
        "text_len": text_len[:n],
        "null_text": text[n:].to(dtype),
        "null_text_len": text_len[n:],
    }


def _encode_texts(pipe: Any, texts: list[str], *, max_sequence_length: int, edit: bool) -> list[list[Tensor]]:
    from fieldkit_zimage.encode import prompt_features

    out: list[list[Tensor]] = []
    for i in range(0, len(texts), BATCH):
        out += prompt_features(pipe, texts[i : i + BATCH], max_sequence_length=max_sequence_length, edit=edit)
    return out


class Encoding(BaseEncoding):
    """How a bucket encodes (:class:`~fieldkit.backbones.prompts.Encoding`), with Z-Image's encoders."""

    encode_module = "fieldkit_zimage.encode"

    def texts(self, pipe: Any, texts: list[str], edit: bool) -> dict[str, Tensor]:
        """The packed features of ``texts`` and, as ``null_*``, of the negative prompt."""
        n = self.max_sequence_length
        features = _encode_texts(pipe, texts, max_sequence_length=n, edit=edit)
        negative = _encode_texts(pipe, [self.negative_prompt], max_sequence_length=n, edit=edit)
        return _packed(features, negative[0], self.dtype)


def prompt_bucket(
    file: Path, enc: Encoding, *, template: str = "{prompt}", cache: Path | None = None
) -> CachedBucket:
    """T2I prompts of ``file`` encoded by the pipeline's text encoder (cached; re-encoded only when stale).

    ``cache`` defaults to ``FILE.zimage-features.safetensors`` beside the prompt file.
    """
    return PROMPTS.bucket(
        file, enc, template, cache, lambda texts: enc.texts(enc.encoders(edit=False), texts, edit=False)
    )


def vae_scale(pipeline: Path) -> int:
    """The VAE's downsampling factor, ``2 ** (len(block_out_channels) - 1)``, from its config."""
    file = pipeline / "vae" / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FieldkitError(
            f"no readable VAE config at {file} ({err})",
            hint="point `pipeline` at a ZImageOmniPipeline folder",
        ) from None
    return int(2 ** (len(config["block_out_channels"]) - 1))


def edit_bucket(
    pairs: Path, enc: Encoding, *, template: str = "{instruction}", cache: Path | None = None
) -> CachedBucket:
    """Edit pairs encoded by the encoders of the pipeline (a ``ZImageOmniPipeline`` folder), cached.

    ``cache`` defaults to ``FILE.zimage-features.safetensors`` beside a pair file, or
    ``FOLDER/zimage-features.safetensors`` inside a pair folder.
    """
    items = read_pairs(pairs, template)
    pipeline, shape = enc.pipeline, enc.shape
    scale = vae_scale(pipeline)
    size = (shape[-1] * scale, shape[-2] * scale)
    images: list[Path] = [p.source for p in items] + [p.target for p in items if p.target is not None]
    loaded = {}
    for pair in items:  # every image is checked before anything is encoded or written
        for image in (pair.source, pair.target):
            if image is not None:
                loaded[image] = load_image(image, size, pair.where)
    texts = [p.text for p in items]
    digest = fingerprint(enc.key(texts, [str(i) for i in images]), pipeline, TEXT_ENCODER + IMAGE_ENCODERS)
    for image in images:
        digest.update(hashlib.sha256(image.read_bytes()).digest())
    key = digest.hexdigest()
    path = cache or (
        pairs / "zimage-features.safetensors"
        if pairs.is_dir()
        else pairs.with_name(pairs.name + ".zimage-features.safetensors")
    )
    targets = items[0].target is not None

    def encode() -> dict[str, Tensor]:
        from fieldkit_zimage.encode import image_latent, image_siglip

        pipe = enc.encoders(edit=True)
        tensors = enc.texts(pipe, texts, edit=True)
        dtype = enc.dtype
        tensors["source"] = torch.stack([image_latent(pipe, loaded[p.source]) for p in items]).to(dtype)
        tensors["siglip"] = torch.stack([image_siglip(pipe, loaded[p.source]) for p in items]).to(dtype)
        if targets:  # then every pair has one
            paths = [p.target for p in items if p.target is not None]
            tensors["target"] = torch.stack([image_latent(pipe, loaded[path]) for path in paths]).to(dtype)
        if tuple(tensors["source"].shape[1:]) != tuple(shape):
            raise FieldkitError(
                f"the VAE of {pipeline} gives latents {list(tensors['source'].shape[1:])}, not the bucket's "
                f"shape {list(shape)}",
                hint="set `shape` to the latent shape of your images",
            )
        return tensors

    path = cached(path, EDITS_FORMAT, key, texts, encode)
    return CachedBucket(path, shape, ("text", "text_len", "source", "siglip"), NULLS, targets=targets)
