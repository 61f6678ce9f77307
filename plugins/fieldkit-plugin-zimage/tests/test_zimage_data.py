"""``zimage.prompts`` and ``zimage.edits``: features exactly as the pipelines compute them, cached once, and
one clear error naming the file for a missing, corrupt or wrongly sized image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fieldkit_zimage.data import Encoding, edit_bucket, prompt_bucket
from fieldkit_zimage.encode import image_latent, image_siglip, prompt_features
from fieldkit_zimage.field import unpack_text

from fieldkit.errors import FieldkitError

SHAPE = (16, 8, 8)


def prompts(tiny: Path, file: Path, negative_prompt: str = ""):
    enc = Encoding(tiny / "t2i", SHAPE, negative_prompt, max_sequence_length=64, dtype=torch.float32)
    return prompt_bucket(file, enc)


def edits(tiny: Path, pairs: Path):
    return edit_bucket(pairs, Encoding(tiny / "omni", SHAPE, max_sequence_length=64, dtype=torch.float32))


def write_pairs(folder: Path, make_image, n: int = 3, targets: bool = True) -> Path:
    """``n`` random 64 x 64 source (and target) images and a JSONL file naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        make_image(i).save(folder / f"src{i}.png")
        row = {"source": f"src{i}.png", "instruction": f"edit number {i}"}
        if targets:
            make_image(100 + i).save(folder / f"tgt{i}.png")
            row["target"] = f"tgt{i}.png"
        lines.append(json.dumps(row))
    file = folder / "pairs.jsonl"
    file.write_text("\n".join(lines) + "\n")
    return file


def test_prompts_are_encoded_as_the_pipeline_encodes_them_and_cached(tiny, t2i_pipe, tmp_path: Path) -> None:
    file = tmp_path / "p.csv"
    file.write_text("prompt\na red cat\ntwo dogs on a hill\n")
    data = prompts(tiny, file, negative_prompt="blurry")
    batch = data.rows(torch.tensor([1, 0]))
    want = prompt_features(t2i_pipe, ["two dogs on a hill", "a red cat"], max_sequence_length=64, edit=False)
    got = unpack_text(batch.cond["text"], batch.cond["text_len"])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g[0], w[0], rtol=0, atol=1e-6)
    null = batch.cond.uncond()
    (blurry,) = prompt_features(t2i_pipe, ["blurry"], max_sequence_length=64, edit=False)
    for segs in unpack_text(null["text"], null["text_len"]):
        torch.testing.assert_close(segs[0], blurry[0], rtol=0, atol=1e-6)
    assert batch.target is None and data.shape == SHAPE
    stamp = data.cache.stat().st_mtime_ns
    assert (
        prompts(tiny, file, negative_prompt="blurry").cache.stat().st_mtime_ns == stamp
    )  # read, not encoded
    file.write_text("prompt\na red cat\na bird\n")
    assert prompts(tiny, file, negative_prompt="blurry").texts == ["a red cat", "a bird"]
    assert data.cache.stat().st_mtime_ns != stamp


def test_edit_pairs_are_cached_as_the_omni_pipeline_conditions_on_them(
    tiny, omni_pipe, make_image, tmp_path: Path
) -> None:
    file = write_pairs(tmp_path / "pairs", make_image)
    data = edits(tiny, file)
    batch = data.rows(torch.tensor([2, 0]))
    cond = batch.cond
    for row, i in enumerate((2, 0)):
        torch.testing.assert_close(
            cond["source"][row], image_latent(omni_pipe, make_image(i)), rtol=0, atol=0
        )
        torch.testing.assert_close(
            cond["siglip"][row], image_siglip(omni_pipe, make_image(i)), rtol=0, atol=0
        )
        torch.testing.assert_close(
            batch.target[row], image_latent(omni_pipe, make_image(100 + i)), rtol=0, atol=0
        )
    (want,) = prompt_features(omni_pipe, ["edit number 2"], max_sequence_length=64, edit=True)
    got = unpack_text(cond["text"], cond["text_len"])[0]
    assert len(got) == 3
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
    uncond = cond.uncond()  # the negative prompt replaces the text; the source and its features stay
    assert torch.equal(uncond["source"], cond["source"]) and torch.equal(uncond["siglip"], cond["siglip"])
    assert not torch.equal(uncond["text"], cond["text"])


def test_a_folder_of_images_with_instruction_files_is_a_bucket(tiny, make_image, tmp_path: Path) -> None:
    folder = tmp_path / "edits"
    folder.mkdir()
    for i in range(2):
        make_image(i).save(folder / f"im{i}.png")
        (folder / f"im{i}.txt").write_text(f"instruction {i}\n")
    data = edits(tiny, folder)
    assert data.texts == ["instruction 0", "instruction 1"]
    assert (
        data.cache == folder / "zimage-features.safetensors" and data.rows(torch.tensor([0])).target is None
    )
    (folder / "im2.png").write_bytes((folder / "im0.png").read_bytes())
    with pytest.raises(FieldkitError, match=r"im2\.png: no instruction file im2\.txt"):
        edits(tiny, folder)


@pytest.mark.parametrize("problem", ["missing", "corrupt", "size"])
def test_a_bad_image_is_one_error_naming_the_file_and_nothing_is_written(
    tiny, make_image, tmp_path: Path, problem: str
) -> None:
    file = write_pairs(tmp_path / "pairs", make_image)
    bad = tmp_path / "pairs" / "tgt1.png"
    if problem == "missing":
        bad.unlink()
        pattern = r"pairs\.jsonl:2: image .*tgt1\.png not found"
    elif problem == "corrupt":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        pattern = r"pairs\.jsonl:2: cannot read image .*tgt1\.png"
    else:
        make_image(7, size=(48, 64)).save(bad)
        pattern = r"pairs\.jsonl:2: image .*tgt1\.png is 48x64 pixels; this bucket needs 64x64"
    with pytest.raises(FieldkitError, match=pattern):
        edits(tiny, file)
    assert not list((tmp_path / "pairs").glob("*.safetensors"))


def test_targets_for_some_pairs_only_are_refused(tiny, make_image, tmp_path: Path) -> None:
    file = write_pairs(tmp_path / "pairs", make_image)
    rows = [json.loads(line) for line in file.read_text().splitlines()]
    del rows[1]["target"]
    file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(FieldkitError, match=r"pairs\.jsonl:2: no target image, while 2 of 3 pairs have one"):
        edits(tiny, file)


def test_csv_pairs_resolve_paths_beside_the_file_and_name_the_line_of_a_bad_row(tmp_path: Path) -> None:
    from fieldkit.backbones.pairs import read_pairs

    file = tmp_path / "pairs.csv"
    file.write_text("source,instruction,target\na.png,make it red,a.out.png\nb.png,make it blue,b.out.png\n")
    pairs = read_pairs(file, "edit: {instruction}")
    assert [(p.source, p.text, p.target) for p in pairs] == [
        (tmp_path / "a.png", "edit: make it red", tmp_path / "a.out.png"),
        (tmp_path / "b.png", "edit: make it blue", tmp_path / "b.out.png"),
    ]
    file.write_text("source,instruction\na.png,make it red\n,make it blue\n")
    with pytest.raises(FieldkitError, match=r"pairs\.csv:3: no 'source' column"):
        read_pairs(file)
    file.write_text("source,text\na.png,make it red\n")
    with pytest.raises(FieldkitError, match=r"pairs\.csv:2: the template '\{instruction\}' needs column"):
        read_pairs(file)


def test_a_dry_run_leaves_no_feature_cache_beside_the_prompts(tiny, tmp_path: Path) -> None:
    from fieldkit.backbones.prompts import caches_in_scratch

    file = tmp_path / "p.csv"
    file.write_text("prompt\na red cat\n")
    with caches_in_scratch():
        data = prompts(tiny, file)
        assert data.rows(torch.tensor([0])).cond["text"].shape[0] == 1  # the bucket serves its features
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]  # nothing written beside the data
