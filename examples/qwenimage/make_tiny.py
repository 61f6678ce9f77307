"""A tiny, random copy of examples/qwenimage that runs on a CPU in seconds (its samples are noise).

    python examples/qwenimage/make_tiny.py OUT
    fieldkit validate OUT/graph.yaml
    fieldkit distill OUT/graph.yaml --dry-run
    fieldkit distill OUT/graph.yaml --out OUT/runs/graph

Writes, under OUT, what the graphs expect at the same relative paths: models/qwen-image (a tiny random
QwenImagePipeline) and models/qwen-image-edit (a tiny random QwenImageEditPipeline of the same shape),
random LoRAs of the Qwen-Image transformer (the anime one as a single .safetensors file), the prompts and
edit-pair files, random 96 x 64 source images, and graph.yaml / loras.yaml rewritten for the tiny models:
latent shape [16, 8, 12], float32, 4 sampling steps, rank-4 LoRA student, 2 training steps on the CPU.
Everything else (fields, routes, method) is the graphs' own, so this checks the real graphs' plumbing end
to end.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

HERE = Path(__file__).parent
GRAPHS = ("graph.yaml", "loras.yaml")


def shrink(graph: dict[str, Any]) -> dict[str, Any]:
    """The graph with tiny data shapes, float32 models and encoders, a rank-4 student, a 2-step CPU run."""
    for field in graph["fields"].values():
        if "dtype" in field:
            field["dtype"] = "float32"
    for route in graph["routes"].values():
        route["data"].update(shape=[16, 8, 12], dtype="float32")
    graph["student"]["lora"] = {"rank": 4}
    graph["flow"]["steps"] = 4
    graph["run"].update(steps=2, batch_size=2, grad_accum=1, precision="fp32", device="cpu", log_every=1)
    return graph


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from fieldkit_qwenimage.tiny import make_tiny_lora, make_tiny_pipeline

    out: Path = args.out
    (out / "edits").mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "prompts.csv", out / "prompts.csv")
    rng = np.random.default_rng(args.seed)
    for pairs in sorted((HERE / "edits").glob("*.jsonl")):
        shutil.copy(pairs, out / "edits" / pairs.name)
        for line in pairs.read_text(encoding="utf-8").splitlines():
            image = out / "edits" / json.loads(line)["source"]
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(image)
    models = out / "models"
    t2i = make_tiny_pipeline(models / "qwen-image", seed=args.seed)
    make_tiny_pipeline(models / "qwen-image-edit", edit=True, seed=args.seed + 1)
    for i, name in enumerate(("anime-lora", "realism-lora", "poster-lora")):
        make_tiny_lora(t2i, models / name, seed=args.seed + 2 + i)
    shutil.move(models / "anime-lora" / "pytorch_lora_weights.safetensors", models / "anime-lora.safetensors")
    shutil.rmtree(models / "anime-lora")  # a single file, as users download them
    for name in GRAPHS:
        graph = shrink(yaml.safe_load((HERE / name).read_text(encoding="utf-8")))
        (out / name).write_text(yaml.safe_dump(graph, sort_keys=False), encoding="utf-8")
    print(f"wrote tiny Qwen-Image models, data and {', '.join(GRAPHS)} to {out}")


if __name__ == "__main__":
    main()
