"""Rows of CSV / JSONL files, and safetensors feature caches that data buckets read row by row.

A cache is one safetensors file: per-row tensors (first dimension = rows), any extra tensors (null values),
and metadata holding a format tag, a fingerprint of what the features depend on, and the rows' texts. A
cache whose format and fingerprint match is read instead of encoding again; it is written atomically.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from fieldkit.atomic import atomic_path
from fieldkit.errors import FieldkitError


def read_rows(path: Path, what: str = "prompt file") -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of a CSV file (a header row, then one row per item) or a JSONL file."""
    if not path.is_file():
        raise FieldkitError(f"no {what} at {path}", hint="give a .csv (with a header) or .jsonl file")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                yield reader.line_num, {k: v for k, v in row.items() if k is not None}
        return
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        raise FieldkitError(f"{path}: unknown {what} type {path.suffix!r}", hint="use .csv or .jsonl")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise FieldkitError(f"{path}:{number}: not a JSON object: {err.msg}") from None
        if not isinstance(row, dict):
            raise FieldkitError(f"{path}:{number}: each line must be a JSON object, got {type(row).__name__}")
        yield number, {str(k): str(v) for k, v in row.items() if v is not None}


def fill(template: str, row: dict[str, str], where: str) -> str:
    """``template.format(**row)``, or one clear error naming ``where`` and the missing column."""
    try:
        return template.format(**row)
    except KeyError as err:
        raise FieldkitError(
            f"{where}: the template {template!r} needs column {err.args[0]!r}; the row has {sorted(row)}"
        ) from None


def read_texts(path: Path, template: str) -> list[str]:
    """The texts of a prompt file: ``template`` filled from each row's columns."""
    texts = [fill(template, row, f"{path}:{number}") for number, row in read_rows(path)]
    if not texts:
        raise FieldkitError(f"{path} holds no prompts")
    return texts


def digest_folders(digest: hashlib._Hash, root: Path, subfolders: tuple[str, ...]) -> None:
    """Feed ``digest`` what a model's outputs depend on: each file's name and size in ``root/<subfolder>``,
    and the bytes of its config and vocabulary files."""
    for sub in subfolders:
        folder = root / sub
        for file in sorted(folder.iterdir()) if folder.is_dir() else []:
            digest.update(f"{sub}/{file.name}:{file.stat().st_size}".encode())
            if file.suffix in (".json", ".txt", ".model", ".jinja"):
                digest.update(file.read_bytes())


def cached_fingerprint(path: Path, fmt: str) -> str | None:
    """The fingerprint stored in a cache file of format ``fmt``, or ``None`` when there is no such cache."""
    if not path.is_file():  # missing, or a FIFO or a device: never opened (reading a FIFO would hang)
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (OSError, RuntimeError, ValueError):  # missing, truncated or not a safetensors file
        return None
    return meta.get("fingerprint") if meta.get("format") == fmt else None


def write_cache(path: Path, tensors: dict[str, Tensor], texts: list[str], fmt: str, key: str) -> None:
    """Write the cache atomically (a temporary file renamed into place)."""
    meta = {"format": fmt, "fingerprint": key, "texts": json.dumps(texts)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


class CachedRows:
    """Per-row tensors of a cache, read from disk for the rows asked (a large cache is never loaded whole)."""

    def __init__(self, cache: Path, keys: tuple[str, ...], extra: tuple[str, ...] = ()) -> None:
        self.cache = cache
        self.keys = keys
        with safe_open(str(cache), framework="pt") as fh:
            self.texts: list[str] = json.loads((fh.metadata() or {})["texts"])
            self.extra = {key: fh.get_tensor(key) for key in extra}

    def __len__(self) -> int:
        return len(self.texts)

    def rows(self, index: Tensor) -> dict[str, Tensor]:
        """The tensors of rows ``index``."""
        with safe_open(str(self.cache), framework="pt") as fh:
            parts = {key: fh.get_slice(key) for key in self.keys}
            return {key: torch.cat([part[int(i) : int(i) + 1] for i in index]) for key, part in parts.items()}
