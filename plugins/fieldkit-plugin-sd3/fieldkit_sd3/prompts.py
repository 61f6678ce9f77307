"""The ``sd3.prompts`` data bucket: prompts (or edit pairs) from CSV / JSONL, embedded once and cached.

Every row of the file becomes one text, ``template.format(**row)``: ``"{prompt}"`` for T2I prompts, or e.g.
``"{instruction}: {prompt}"`` for edit pairs ``{prompt, instruction}``. The texts and the empty prompt are
encoded with the pipeline's own ``encode_prompt`` (CLIP-L + CLIP-G + T5, exactly what
``StableDiffusion3Pipeline`` feeds its transformer) and written to a safetensors cache. A cache whose
fingerprint (texts, encoder configs, sequence length, dtype) matches is read instead of encoding again,
row by row, so a large cache is never loaded whole (:mod:`fieldkit.backbones.prompts`).

Batches carry ``text`` ``[B, T, D]`` and ``pooled`` ``[B, P]`` with the empty prompt's embeddings as their
null values (what classifier-free guidance contrasts against, as diffusers' default negative prompt).
SD3 takes no source image: an edit pair is text here, and the edit itself is the capability of the route's
field (a LoRA teacher, see docs/sd3.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from fieldkit.backbones.prompts import CachedBucket, cached, fingerprint
from fieldkit.plugin_api import FieldkitError, read_texts

CACHE_FORMAT = "fieldkit-sd3.prompts/1"
TEXT_ENCODERS = (
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
)


@torch.inference_mode()
def encode_texts(
    pipeline: Path,
    texts: list[str],
    *,
    max_sequence_length: int,
    dtype: torch.dtype,
    device: torch.device,
    batch_size: int = 16,
) -> dict[str, Tensor]:
    """``text``/``pooled`` of every text and ``null_text``/``null_pooled`` of ``""``, with the pipeline's text
    encoders (loaded without transformer or VAE, in ``dtype``, on ``device``)."""
    from diffusers import StableDiffusion3Pipeline

    if not (pipeline / "model_index.json").is_file():
        raise FieldkitError(
            f"no SD3 pipeline folder at {pipeline} (model_index.json missing)",
            hint="point `pipeline` at the folder holding text_encoder*/ and tokenizer*/ of SD3 / SD3.5",
        )
    pipe = StableDiffusion3Pipeline.from_pretrained(
        str(pipeline), transformer=None, vae=None, dtype=dtype, local_files_only=True
    ).to(device)

    def encode(chunk: list[str]) -> tuple[Tensor, Tensor]:
        text, _, pooled, _ = pipe.encode_prompt(
            prompt=chunk,
            prompt_2=None,
            prompt_3=None,
            device=device,
            do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length,
        )
        return text.to(dtype).cpu(), pooled.to(dtype).cpu()

    parts = [encode(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    null_text, null_pooled = encode([""])
    return {
        "text": torch.cat([p[0] for p in parts]),
        "pooled": torch.cat([p[1] for p in parts]),
        "null_text": null_text,
        "null_pooled": null_pooled,
    }


def prompt_bucket(
    file: Path,
    pipeline: Path,
    shape: tuple[int, ...],
    *,
    template: str = "{prompt}",
    cache: Path | None = None,
    max_sequence_length: int = 256,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | None = None,
) -> CachedBucket:
    """The prompts of ``file`` as a bucket of cached embeddings, encoding only when the cache is missing or
    stale (its fingerprint: the texts, the text encoders' and tokenizers' files, the T5 length, the dtype).

    ``cache`` defaults to ``FILE.sd3-embeddings.safetensors`` beside the prompt file.
    """
    texts = read_texts(file, template)
    path = cache or file.with_name(file.name + ".sd3-embeddings.safetensors")
    key = fingerprint([texts, max_sequence_length, str(dtype)], pipeline, TEXT_ENCODERS).hexdigest()
    path = cached(
        path,
        CACHE_FORMAT,
        key,
        texts,
        lambda: encode_texts(
            pipeline,
            texts,
            max_sequence_length=max_sequence_length,
            dtype=dtype,
            device=device or torch.device("cpu"),
        ),
    )
    return CachedBucket(path, shape, ("text", "pooled"), nulls=("text", "pooled"))
