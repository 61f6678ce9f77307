"""Edit pairs as backbone plugins' edit buckets read them: a source image, an instruction and, optionally, a
target image, from a CSV / JSONL file (columns ``source``, ``instruction``, ``target``; image paths relative
to the file) or from a folder (``NAME.png`` with its instruction in ``NAME.txt`` and an optional
``NAME.target.png``). Every image must exist and decode (and, where the bucket says, have its pixel size):
anything else is one error naming the file, never a silent skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fieldkit.errors import FieldkitError
from fieldkit.tables import fill, read_rows

if TYPE_CHECKING:
    from torch import Tensor

    from fieldkit.backbones.prompts import Encoding

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class EditPair:
    """One edit: the source image, the instruction's text, the target image if any, and where it was read."""

    source: Path
    text: str
    target: Path | None
    where: str


def read_pairs(path: Path, template: str = "{instruction}") -> list[EditPair]:
    """The edit pairs of a CSV / JSONL file or of a folder (see the module's docstring)."""
    pairs = _folder_pairs(path, template) if path.is_dir() else _file_pairs(path, template)
    if not pairs:
        raise FieldkitError(f"{path} holds no edit pairs")
    with_target = sum(p.target is not None for p in pairs)
    if 0 < with_target < len(pairs):
        missing = next(p for p in pairs if p.target is None)
        raise FieldkitError(
            f"{missing.where}: no target image, while {with_target} of {len(pairs)} pairs have one",
            hint="give a target for every pair (off-policy baselines train on them) or for none",
        )
    return pairs


def _file_pairs(path: Path, template: str) -> list[EditPair]:
    pairs = []
    for number, row in read_rows(path, "edit-pair file"):
        where = f"{path}:{number}"
        if not row.get("source"):
            raise FieldkitError(f"{where}: no 'source' column (the image to edit); the row has {sorted(row)}")
        target = row.get("target") or None
        pairs.append(
            EditPair(
                source=path.parent / row["source"],
                text=fill(template, row, where),
                target=path.parent / target if target else None,
                where=where,
            )
        )
    return pairs


def _folder_pairs(folder: Path, template: str) -> list[EditPair]:
    pairs = []
    for image in sorted(folder.iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES or image.stem.endswith(".target"):
            continue
        note = image.with_suffix(".txt")
        if not note.is_file():
            raise FieldkitError(
                f"{image}: no instruction file {note.name} beside it",
                hint="each source image NAME.png of an edit folder needs its instruction in NAME.txt",
            )
        instruction = note.read_text(encoding="utf-8").strip()
        targets = [t for t in folder.glob(f"{image.stem}.target.*") if t.suffix.lower() in IMAGE_SUFFIXES]
        text = fill(template, {"instruction": instruction}, str(note))
        pairs.append(EditPair(image, text, targets[0] if targets else None, str(image)))
    return pairs


def load_image(path: Path, size: tuple[int, int] | None, where: str) -> Any:
    """The RGB image at ``path`` (of exactly ``size`` (width, height) pixels, unless ``None``), or one error
    naming the file."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FieldkitError(f"{where}: image {path} not found")
    try:
        with Image.open(path) as img:
            img.load()
            image = img.convert("RGB")
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as err:
        raise FieldkitError(f"{where}: cannot read image {path} ({err})") from None
    if size is not None and image.size != size:
        raise FieldkitError(
            f"{where}: image {path} is {image.size[0]}x{image.size[1]} pixels; this bucket needs "
            f"{size[0]}x{size[1]} (its latent shape times the VAE's scale)",
            hint="resize the images, or set the bucket's `shape` to [C, height / 8, width / 8]",
        )
    return image


def load_pair_images(
    items: list[EditPair], target_size: tuple[int, int] | None, same_sources: bool = True
) -> dict[Path, Any]:
    """Every image of ``items`` loaded and checked before anything is encoded: targets of ``target_size``
    (width, height) pixels (the bucket's latent shape times the VAE's scale), sources of one size when
    ``same_sources`` (their latents are stacked)."""
    loaded: dict[Path, Any] = {}
    first: tuple[Path, Any] | None = None
    for pair in items:
        source = loaded[pair.source] = load_image(pair.source, None, pair.where)
        if same_sources and first is not None and source.size != first[1].size:
            raise FieldkitError(
                f"{pair.where}: source image {pair.source} is {source.size[0]}x{source.size[1]} pixels, "
                f"{first[0]} is {first[1].size[0]}x{first[1].size[1]}",
                hint="give every source image of a bucket one size (their latents are stacked)",
            )
        first = first or (pair.source, source)
        if pair.target is not None:
            loaded[pair.target] = load_image(pair.target, target_size, pair.where)
    return loaded


def pairs_cache(pairs: Path, cache: Path | None, suffix: str) -> Path:
    """``cache``, else ``FOLDER/<suffix>`` inside a pair folder or ``FILE.<suffix>`` beside a pair file."""
    if cache is not None:
        return cache
    return pairs / suffix if pairs.is_dir() else pairs.with_name(f"{pairs.name}.{suffix}")


def digest_images(digest: Any, items: list[EditPair]) -> Any:
    """``digest`` (a hashlib object) updated with the bytes of every image of ``items``, in order."""
    import hashlib

    for pair in items:
        for image in (pair.source, pair.target):
            if image is not None:
                digest.update(hashlib.sha256(image.read_bytes()).digest())
    return digest


@dataclass(frozen=True)
class LoadedPairs:
    """An edit bucket's pairs read and every image loaded and checked (:func:`load_edit_pairs`): the pairs,
    their images by path, their texts, the cache's fingerprint, and whether every pair has a target."""

    items: list[EditPair]
    images: dict[Path, Any]
    texts: list[str]
    key: str
    targets: bool


def load_edit_pairs(
    pairs: Path, template: str, enc: Encoding, subfolders: tuple[str, ...], *parts: Any
) -> LoadedPairs:
    """The pairs at ``pairs`` (texts from ``template``), every image loaded before anything is encoded
    (targets of ``enc``'s latent shape times 8 pixels, sources of one size), with the fingerprint of a
    cache of their features: the texts, the sources' paths, ``parts``, ``enc``'s settings, the encoders'
    ``subfolders`` of ``enc.pipeline`` and every image's bytes."""
    from fieldkit.backbones.prompts import fingerprint

    items = read_pairs(pairs, template)
    shape = enc.shape
    loaded = load_pair_images(items, (shape[-1] * 8, shape[-2] * 8))
    texts = [p.text for p in items]
    key_parts = enc.key(texts, [str(p.source) for p in items], *parts)
    key = digest_images(fingerprint(key_parts, enc.pipeline, subfolders), items).hexdigest()
    return LoadedPairs(items, loaded, texts, key, items[0].target is not None)


def stacked_targets(latents: list[Tensor], enc: Encoding) -> Tensor:
    """The target ``latents`` stacked in ``enc``'s dtype, refused unless each has the bucket's shape."""
    import torch

    target = torch.stack(latents).to(enc.dtype)
    if tuple(target.shape[1:]) != tuple(enc.shape):
        raise FieldkitError(
            f"the VAE of {enc.pipeline} gives target latents {list(target.shape[1:])}, "
            f"not the bucket's shape {list(enc.shape)}",
            hint="set `shape` to the latent shape of your target images",
        )
    return target
