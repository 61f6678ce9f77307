"""The flux.prompts and flux.edits buckets: the pipelines' own features, cached once, and one clear error for
a bad image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fieldkit_flux.data import Encoding, edit_bucket, prompt_bucket
from fieldkit_flux.encode import image_latent, load_encoders, prompt_features

from fieldkit.errors import FieldkitError


def encoding(tiny: Path, name: str) -> Encoding:
    return Encoding(
        tiny / name, (16, 8, 12), negative_prompt="blurry", max_sequence_length=16, dtype=torch.float32
    )


def test_prompts_are_the_pipelines_features_cached_once(tiny: Path, tmp_path: Path) -> None:
    file = tmp_path / "prompts.csv"
    file.write_text("prompt\na red cat\ntwo dogs on a hill\n")
    bucket = prompt_bucket(file, encoding(tiny, "t2i"))
    pipe = load_encoders(tiny / "t2i", edit=False, dtype=torch.float32, device=torch.device("cpu"))
    text, pooled = prompt_features(pipe, ["a red cat", "two dogs on a hill"], max_sequence_length=16)
    batch = bucket.rows(torch.tensor([1, 0]))
    torch.testing.assert_close(batch.cond["text"], text.flip(0), rtol=0, atol=0)
    torch.testing.assert_close(batch.cond["pooled"], pooled.flip(0), rtol=0, atol=0)
    null_text, _ = prompt_features(pipe, ["blurry"], max_sequence_length=16)
    torch.testing.assert_close(batch.cond.uncond()["text"], null_text.expand(2, -1, -1), rtol=0, atol=0)
    stamp = bucket.cache.stat().st_mtime_ns
    assert (
        prompt_bucket(file, encoding(tiny, "t2i")).cache.stat().st_mtime_ns == stamp
    )  # read, not re-encoded


def test_edit_pairs_cache_the_kontext_source_latents(tiny: Path, make_image, tmp_path: Path) -> None:
    for i in (1, 2):
        make_image(i).save(tmp_path / f"s{i}.png")
        make_image(i + 10).save(tmp_path / f"t{i}.png")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        '{"source": "s1.png", "instruction": "make it blue", "target": "t1.png"}\n'
        '{"source": "s2.png", "instruction": "add a hat", "target": "t2.png"}\n'
    )
    bucket = edit_bucket(pairs, encoding(tiny, "kontext"), auto_resize=False)
    batch = bucket.rows(torch.tensor([1]))
    pipe = load_encoders(tiny / "kontext", edit=True, dtype=torch.float32, device=torch.device("cpu"))
    want = image_latent(pipe, make_image(2), auto_resize=False)
    torch.testing.assert_close(batch.cond["source"][0], want, rtol=0, atol=0)
    assert batch.target is not None and batch.target.shape == (1, 16, 8, 12)
    make_image(3, (64, 64)).save(tmp_path / "t2.png")
    with pytest.raises(FieldkitError, match=r"pairs.jsonl:2: image .*t2.png is 64x64 pixels"):
        edit_bucket(pairs, encoding(tiny, "kontext"), auto_resize=False)
