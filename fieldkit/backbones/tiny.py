"""What the tiny copies of a backbone's examples share (each ``examples/<backbone>/make_tiny.py``): the data
files with random source images, and a graph shrunk to a CPU run of seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def copy_data(examples: Path, out: Path, image_size: tuple[int, int], seed: int = 0) -> None:
    """Copy ``prompts.csv`` and ``edits/*.jsonl`` of ``examples`` to ``out``, with a random RGB image of
    ``image_size`` (width, height) pixels at every pair's ``source`` path."""
    import numpy as np
    from PIL import Image

    (out / "edits").mkdir(parents=True, exist_ok=True)
    shutil.copy(examples / "prompts.csv", out / "prompts.csv")
    rng = np.random.default_rng(seed)
    for pairs in sorted((examples / "edits").glob("*.jsonl")):
        shutil.copy(pairs, out / "edits" / pairs.name)
        for line in pairs.read_text(encoding="utf-8").splitlines():
            image = out / "edits" / json.loads(line)["source"]
            image.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (image_size[1], image_size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(image)


def tiny_args(doc: str, argv: list[str] | None) -> tuple[Path, int]:
    """``OUT`` and ``--seed`` (default 0) of an example's make_tiny.py, described by ``doc``'s first line."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return args.out, args.seed


def single_file_lora(folder: Path) -> Path:
    """The LoRA in ``folder`` (``pytorch_lora_weights.safetensors``) moved to ``FOLDER.safetensors``, a
    single file as users download them; ``folder`` is removed."""
    file = folder.with_name(f"{folder.name}.safetensors")
    shutil.move(folder / "pytorch_lora_weights.safetensors", file)
    shutil.rmtree(folder)
    return file


def shrink(
    graph: dict[str, Any], data: dict[str, Any], by_type: dict[str, dict[str, Any]] | None = None
) -> None:
    """Turn a graph (as YAML reads it) into a tiny CPU run, in place: float32 models, every route's data
    updated with ``data`` (and ``by_type[type]`` for its dataset type), a rank-4 LoRA student, 4 sampling
    steps, 2 training steps of batch 2."""
    for field in graph["fields"].values():
        if "dtype" in field:
            field["dtype"] = "float32"
    for route in graph["routes"].values():
        route["data"].update(dtype="float32", **data, **(by_type or {}).get(route["data"]["type"], {}))
    graph["student"]["lora"] = {"rank": 4}
    graph["flow"]["steps"] = 4
    graph["run"].update(steps=2, batch_size=2, grad_accum=1, precision="fp32", device="cpu", log_every=1)


def write_graphs(
    examples: Path, out: Path, names: tuple[str, ...], data: dict[str, Any], **by_type: Any
) -> None:
    """Each graph ``names`` of ``examples`` shrunk (:func:`shrink`) and written to ``out``."""
    import yaml

    for name in names:
        graph = yaml.safe_load((examples / name).read_text(encoding="utf-8"))
        shrink(graph, data, by_type)
        (out / name).write_text(yaml.safe_dump(graph, sort_keys=False), encoding="utf-8")


def qwen_byte_tokenizer(specials: tuple[str, ...], max_length: int) -> Any:
    """A byte-level BPE tokenizer (256 byte tokens, no merges) with Qwen's special tokens ``specials``
    (``<|endoftext|>`` the pad, ``<|im_end|>`` the end): the real vocabularies cannot be fetched offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {char: i for i, char in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    extra = [t for t in specials if t != "<|endoftext|>"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=extra,
        model_max_length=max_length,
    )
    tok.add_special_tokens({"additional_special_tokens": extra})
    return tok


def flux_vae() -> Any:
    """A 4-block ``AutoencoderKL`` (8x down, 8 to 16 channels wide) with the FLUX VAE's 16 latent channels,
    scaling and shift factors (FLUX.1 and Z-Image share that VAE)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    ).eval()
