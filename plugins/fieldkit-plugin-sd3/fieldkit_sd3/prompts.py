"""The ``sd3.prompts`` data bucket: prompts (or edit pairs) from CSV / JSONL, embedded once and cached.

Every row of the file becomes one text, ``template.format(**row)``: ``"{prompt}"`` for T2I prompts, or e.g.
``"{instruction}: {prompt}"`` for edit pairs ``{prompt, instruction}``. The texts and the empty prompt are
encoded with the pipeline's own ``encode_prompt`` (CLIP-L + CLIP-G + T5, exactly what
``StableDiffusion3Pipeline`` feeds its transformer) and written to a safetensors cache. A cache whose
fingerprint (texts, encoder configs, sequence length, dtype) matches is read instead of encoding again,
row by row, so a large cache is never loaded whole.

Batches carry ``text`` ``[B, T, D]`` and ``pooled`` ``[B, P]`` with the empty prompt's embeddings as their
null values (what classifier-free guidance contrasts against, as diffusers' default negative prompt).
SD3 takes no source image: an edit pair is text here, and the edit itself is the capability of the route's
field (a LoRA teacher, see docs/sd3.md).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor

from fieldkit.cond import Cond
from fieldkit.data import Batch
from fieldkit.errors import FieldkitError
from fieldkit.tables import CachedRows, cached_fingerprint, digest_folders, read_texts, write_cache

CACHE_FORMAT = "fieldkit-sd3.prompts/1"
TEXT_ENCODERS = (
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
)


def fingerprint(texts: list[str], pipeline: Path, max_sequence_length: int, dtype: torch.dtype) -> str:
    """sha256 of what the cached embeddings depend on: the texts, the text encoders' and tokenizers' config
    files and weight-file sizes, the T5 sequence length and the dtype."""
    digest = hashlib.sha256(json.dumps([texts, max_sequence_length, str(dtype)]).encode())
    digest_folders(digest, pipeline, TEXT_ENCODERS)
    return digest.hexdigest()


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


class PromptBucket:
    """Draws prompts uniformly; a batch is their cached embeddings as a :class:`~fieldkit.Cond`."""

    def __init__(self, cache: Path, shape: tuple[int, ...]) -> None:
        self.cache = cache
        self.shape = shape
        self.table = CachedRows(cache, ("text", "pooled"), ("null_text", "null_pooled"))
        self.texts = self.table.texts
        self.nulls = {"text": self.table.extra["null_text"], "pooled": self.table.extra["null_pooled"]}

    def __len__(self) -> int:
        return len(self.texts)

    def rows(self, index: Tensor) -> Cond:
        """The cached embeddings of rows ``index`` (read from disk row by row)."""
        return Cond(self.table.rows(index), nulls=self.nulls)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """``batch_size`` prompts drawn uniformly with replacement (conditions only, no target images)."""
        return Batch(self.rows(torch.randint(len(self), (batch_size,), generator=generator)))


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
) -> PromptBucket:
    """A :class:`PromptBucket` over ``file``, encoding (and caching) only when the cache is missing or stale.

    ``cache`` defaults to ``FILE.sd3-embeddings.safetensors`` beside the prompt file.
    """
    texts = read_texts(file, template)
    path = cache or file.with_name(file.name + ".sd3-embeddings.safetensors")
    key = fingerprint(texts, pipeline, max_sequence_length, dtype)
    if cached_fingerprint(path, CACHE_FORMAT) != key:
        tensors = encode_texts(
            pipeline,
            texts,
            max_sequence_length=max_sequence_length,
            dtype=dtype,
            device=device or torch.device("cpu"),
        )
        write_cache(path, tensors, texts, CACHE_FORMAT, key)
    return PromptBucket(path, shape)
