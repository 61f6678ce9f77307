"""The qwenimage.prompts and qwenimage.edits buckets: the pipelines' own features, cached once, per-row
negative features for edits, and one clear error for a bad image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fieldkit_qwenimage.data import Encoding, edit_bucket, prompt_bucket
from fieldkit_qwenimage.encode import edit_image, image_latent, load_pipeline, prompt_features

from fieldkit.errors import FieldkitError


def encoding(tiny: Path, name: str) -> Encoding:
    return Encoding(tiny / name, (16, 8, 12), negative_prompt="blurry", dtype=torch.float32)


def test_prompts_are_the_pipelines_features_cached_once(tiny: Path, tmp_path: Path) -> None:
    file = tmp_path / "prompts.csv"
    file.write_text("prompt\na red cat\ntwo dogs on a hill at dusk\n")
    bucket = prompt_bucket(file, encoding(tiny, "t2i"))
    pipe = load_pipeline(tiny / "t2i", edit=False)
    want = prompt_features(pipe, ["two dogs on a hill at dusk", "a red cat"])
    batch = bucket.rows(torch.tensor([1, 0]))
    for row, feature in enumerate(want):
        n = feature.shape[0]
        assert int(batch.cond["text_mask"][row].sum()) == n
        torch.testing.assert_close(batch.cond["text"][row, :n], feature, rtol=0, atol=1e-6)
    null = prompt_features(pipe, ["blurry"])[0]
    torch.testing.assert_close(batch.cond.uncond()["text"][0, : null.shape[0]], null, rtol=0, atol=1e-6)
    stamp = bucket.cache.stat().st_mtime_ns
    assert (
        prompt_bucket(file, encoding(tiny, "t2i")).cache.stat().st_mtime_ns == stamp
    )  # read, not re-encoded


def test_edit_pairs_cache_per_row_negatives_and_source_latents(
    tiny: Path, make_image, tmp_path: Path
) -> None:
    for i in (1, 2):
        make_image(i).save(tmp_path / f"s{i}.png")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        '{"source": "s1.png", "instruction": "make it blue"}\n'
        '{"source": "s2.png", "instruction": "add a hat"}\n'
    )
    bucket = edit_bucket(pairs, encoding(tiny, "edit"))
    batch = bucket.rows(torch.tensor([1]))
    pipe = load_pipeline(tiny / "edit", edit=True)
    resized = edit_image(pipe, make_image(2))
    torch.testing.assert_close(batch.cond["source"][0], image_latent(pipe, resized), rtol=0, atol=1e-6)
    negative = prompt_features(pipe, ["blurry"], images=[resized])[0]
    assert negative.shape[0] == int(batch.cond["negative_text_mask"][0].sum())
    torch.testing.assert_close(
        batch.cond["negative_text"][0, : negative.shape[0]], negative, rtol=0, atol=1e-5
    )
    make_image(3, (64, 64)).save(tmp_path / "s2.png")
    with pytest.raises(FieldkitError, match=r"pairs.jsonl:2: source image .*s2.png is 64x64 pixels"):
        edit_bucket(pairs, encoding(tiny, "edit"))
