"""``sd3.prompts``: prompts and edit pairs from CSV / JSONL, embedded once by the pipeline, cached."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from fieldkit_sd3.prompts import prompt_bucket, read_texts

from fieldkit import loads_graph
from fieldkit.errors import FieldkitError, GraphError
from fieldkit.graph import BuildContext

EXAMPLES = Path(__file__).parents[3] / "examples" / "sd3"


def encode(pipe, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        text, _, pooled, _ = pipe.encode_prompt(
            texts, None, None, do_classifier_free_guidance=False, max_sequence_length=16
        )
    return text, pooled


def bucket(file: Path, tiny: Path, **kwargs):
    return prompt_bucket(file, tiny / "sd3", (4, 8, 8), max_sequence_length=16, dtype=torch.float32, **kwargs)


def test_csv_prompts_are_embedded_as_the_pipeline_embeds_them(tiny: Path, pipe, tmp_path: Path) -> None:
    file = tmp_path / "prompts.csv"
    shutil.copy(EXAMPLES / "prompts.csv", file)
    texts = read_texts(file, "{prompt}")
    data = bucket(file, tiny)
    assert data.texts == texts and len(texts) == 8
    index = torch.tensor([3, 0, 3])
    cond = data.rows(index).cond
    text, pooled = encode(pipe, [texts[i] for i in index])
    torch.testing.assert_close(cond["text"], text, rtol=0, atol=1e-6)
    torch.testing.assert_close(cond["pooled"], pooled, rtol=0, atol=1e-6)
    null_text, null_pooled = encode(pipe, [""])  # diffusers' default negative prompt
    uncond = cond.uncond()
    torch.testing.assert_close(uncond["text"], null_text.expand(3, -1, -1), rtol=0, atol=1e-6)
    torch.testing.assert_close(uncond["pooled"], null_pooled.expand(3, -1), rtol=0, atol=1e-6)
    batch = data.sample(5, torch.Generator().manual_seed(0))
    assert batch.target is None and batch.cond["text"].shape == (5, *text.shape[1:])
    assert data.shape == (4, 8, 8)


def test_edit_pairs_from_jsonl_fill_the_template(tiny: Path, pipe, tmp_path: Path) -> None:
    file = tmp_path / "edits.jsonl"
    shutil.copy(EXAMPLES / "edits.jsonl", file)
    data = bucket(file, tiny, template="{instruction}: {prompt}")
    assert data.texts[0] == "make it a watercolor painting: a red fox in fresh snow"
    text, _ = encode(pipe, [data.texts[1]])
    torch.testing.assert_close(data.rows(torch.tensor([1])).cond["text"], text, rtol=0, atol=1e-6)


def test_the_cache_is_written_once_and_renewed_when_the_texts_change(tiny: Path, tmp_path: Path) -> None:
    file = tmp_path / "p.jsonl"
    file.write_text('{"prompt": "a cat"}\n{"prompt": "a dog"}\n')
    first = bucket(file, tiny)
    cache = first.cache
    assert cache == tmp_path / "p.jsonl.sd3-embeddings.safetensors"
    stamp = cache.stat().st_mtime_ns
    again = bucket(file, tiny)
    assert cache.stat().st_mtime_ns == stamp  # read, not encoded again
    torch.testing.assert_close(
        again.rows(torch.tensor([0, 1])).cond["text"], first.rows(torch.tensor([0, 1])).cond["text"]
    )
    dog = first.rows(torch.tensor([1])).cond["text"]
    file.write_text('{"prompt": "a cat"}\n{"prompt": "a bird"}\n')
    renewed = bucket(file, tiny)
    assert renewed.texts == ["a cat", "a bird"] and cache.stat().st_mtime_ns != stamp
    assert not torch.equal(renewed.rows(torch.tensor([1])).cond["text"], dog)


def test_bad_prompt_files_get_one_clear_error(tiny: Path, tmp_path: Path) -> None:
    missing = tmp_path / "e.jsonl"
    missing.write_text('{"prompt": "a cat"}\n{"text": "a dog"}\n')
    with pytest.raises(FieldkitError, match=r"e.jsonl:2: the template '\{prompt\}' needs column 'prompt'"):
        read_texts(missing, "{prompt}")
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"prompt": "a cat"}\nnot json\n')
    with pytest.raises(FieldkitError, match=r"b\.jsonl:2: not a JSON object"):
        read_texts(broken, "{prompt}")
    (tmp_path / "x.txt").write_text("a cat\n")
    with pytest.raises(FieldkitError, match="unknown prompt file type"):
        read_texts(tmp_path / "x.txt", "{prompt}")


def test_the_dataset_type_reads_paths_relative_to_the_graph(sd3_plugin, tiny: Path, tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "prompts.csv", tmp_path / "prompts.csv")
    graph = tmp_path / "g.yaml"
    graph.write_text(
        f"""
fields:
  base: {{type: sd3, path: '{tiny / "sd3"}'}}
routes:
  t2i:
    field: base
    data: {{type: sd3.prompts, file: prompts.csv, pipeline: '{tiny / "sd3"}', shape: [4, 8, 8],
            max_sequence_length: 16, dtype: float32}}
"""
    )
    from fieldkit import load_graph

    loaded = load_graph(graph)
    data = BuildContext(loaded).build(("routes", "t2i", "data"), loaded.datasets["t2i"])
    assert data.cache == tmp_path / "prompts.csv.sd3-embeddings.safetensors" and len(data) == 8
    with pytest.raises(GraphError, match="shape"):
        loads_graph(graph.read_text().replace("[4, 8, 8]", "[4, 8]"))
