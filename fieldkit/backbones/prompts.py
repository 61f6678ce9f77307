"""A data bucket of encoded prompts (or edit pairs) cached to safetensors, for any backbone's encoders.

A backbone plugin reads its rows, computes a fingerprint of what the features depend on
(:func:`fingerprint`: the texts, settings, and the encoders' files), encodes only when the cache's
fingerprint differs (:func:`cached`), and serves the cache as a :class:`CachedBucket`;
:meth:`PromptCache.bucket` does all of it for a file of prompts. Within :func:`caches_in_scratch` (a dry
run) a cache that would be written goes to a temporary folder instead, removed when the scope ends: a dry
run writes nothing beside the user's data.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from fieldkit.cond import Cond
from fieldkit.data import Batch
from fieldkit.tables import CachedRows, cached_fingerprint, digest_folders, read_texts, write_cache


@dataclass(frozen=True)
class Encoding:
    """How a bucket encodes: the pipeline folder, the latent shape ``[C, H, W]``, the negative prompt, the
    encoder's tokens per prompt, and the encoders' (and cache's) dtype and device. A backbone subclasses it
    with its feature methods, and names the module whose ``load_encoders`` loads its encoders."""

    #: the module (imported when encoders load) with ``load_encoders(pipeline, edit=, dtype=, device=)``
    encode_module: ClassVar[str] = ""

    pipeline: Path
    shape: tuple[int, ...]
    negative_prompt: str = ""
    max_sequence_length: int = 512
    dtype: torch.dtype = torch.bfloat16
    device: torch.device | None = None

    def key(self, *parts: Any) -> list[Any]:
        """What a cache of this encoding depends on, beside the encoders' files."""
        return [*parts, self.negative_prompt, self.max_sequence_length, str(self.dtype)]

    def encoders(self, edit: bool) -> Any:
        """The pipeline's encoders (of its edit pipeline when ``edit``), in this dtype on this device (the CPU
        by default), by :attr:`encode_module`'s ``load_encoders``."""
        load = importlib.import_module(self.encode_module).load_encoders
        return load(self.pipeline, edit=edit, dtype=self.dtype, device=self.device or torch.device("cpu"))


def fingerprint(parts: list[Any], pipeline: Path, subfolders: tuple[str, ...]) -> hashlib._Hash:
    """sha256 of ``parts`` (JSON) and of the encoders' files in ``pipeline/<subfolder>`` (names, sizes,
    configs and vocabularies); a caller may feed it more (image bytes) before ``hexdigest()``."""
    digest = hashlib.sha256(json.dumps(parts).encode())
    digest_folders(digest, pipeline, subfolders)
    return digest


_SCRATCH: ContextVar[Path | None] = ContextVar("fieldkit_cache_scratch", default=None)


@contextlib.contextmanager
def caches_in_scratch() -> Iterator[Path]:
    """Within it, :func:`cached` writes a missing or stale cache into a temporary folder (removed on exit)
    and leaves the cache's own path as it is: what ``--dry-run`` builds its buckets in."""
    with tempfile.TemporaryDirectory(prefix="fieldkit-dry-run-caches-") as folder:
        token = _SCRATCH.set(Path(folder))
        try:
            yield Path(folder)
        finally:
            _SCRATCH.reset(token)


def cached(path: Path, fmt: str, key: str, texts: list[str], encode: Callable[[], dict[str, Tensor]]) -> Path:
    """The cache to read: ``path``, (re)written with ``encode()`` when it is not a ``fmt`` cache of
    fingerprint ``key``; within :func:`caches_in_scratch`, a fresh file in its temporary folder instead of
    writing ``path``. Use the path it returns."""
    if cached_fingerprint(path, fmt) == key:
        return path
    scratch = _SCRATCH.get()
    if scratch is not None:  # built once per scope: the memory check and the session read the same file
        for made in sorted(scratch.glob(f"*-{path.name}")):
            if cached_fingerprint(made, fmt) == key:
                return made
        path = scratch / f"{sum(1 for _ in scratch.iterdir())}-{path.name}"
    write_cache(path, encode(), texts, fmt, key)
    return path


@dataclass(frozen=True)
class PromptCache:
    """A backbone's cache of encoded prompts: ``FILE.<backbone>-features.safetensors`` by default, a ``fmt``
    cache keyed by the texts, the encoding's settings and the encoders' ``subfolders``, served as a bucket of
    ``keys`` with ``nulls``."""

    backbone: str
    fmt: str
    subfolders: tuple[str, ...]
    keys: tuple[str, ...]
    nulls: tuple[str, ...]

    def bucket(
        self,
        file: Path,
        enc: Encoding,
        template: str,
        cache: Path | None,
        encode: Callable[[list[str]], dict[str, Tensor]],
    ) -> CachedBucket:
        """The prompts of ``file`` (``template`` filled from each row), their features ``encode(texts)``
        cached at ``cache`` (recomputed only when stale)."""
        texts = read_texts(file, template)
        path = cache or file.with_name(f"{file.name}.{self.backbone}-features.safetensors")
        key = fingerprint(enc.key(texts), enc.pipeline, self.subfolders).hexdigest()
        path = cached(path, self.fmt, key, texts, lambda: encode(texts))
        return CachedBucket(path, enc.shape, self.keys, self.nulls)


class CachedBucket:
    """Draws rows of a cache uniformly; a batch is their ``keys`` as a :class:`~fieldkit.Cond` whose null
    values are the cache's ``null_<key>`` tensors for the keys in ``nulls`` (what guidance contrasts
    against), with the rows' ``target`` latents when ``targets``."""

    def __init__(
        self,
        cache: Path,
        shape: tuple[int, ...],
        keys: tuple[str, ...],
        nulls: tuple[str, ...],
        targets: bool = False,
    ) -> None:
        self.cache = cache
        self.shape = shape
        self.targets = targets
        extra = tuple(f"null_{key}" for key in nulls)
        self.table = CachedRows(cache, keys + (("target",) if targets else ()), extra)
        self.nulls = {key: self.table.extra[f"null_{key}"] for key in nulls}

    @property
    def texts(self) -> list[str]:
        """The text of every row."""
        return self.table.texts

    def __len__(self) -> int:
        return len(self.table)

    def rows(self, index: Tensor) -> Batch:
        """The cached tensors of rows ``index`` (read from disk row by row)."""
        data = self.table.rows(index)
        target = data.pop("target", None)
        return Batch(Cond(data, nulls=self.nulls), target)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """``batch_size`` rows drawn uniformly with replacement."""
        return self.rows(torch.randint(len(self), (batch_size,), generator=generator))
