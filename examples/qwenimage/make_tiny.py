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

from pathlib import Path

from fieldkit.backbones.tiny import copy_data, single_file_lora, tiny_args, write_graphs

HERE = Path(__file__).parent
GRAPHS = ("graph.yaml", "loras.yaml")
SHAPE = [16, 8, 12]


def main(argv: list[str] | None = None) -> None:
    out, seed = tiny_args(__doc__, argv)
    from fieldkit_qwenimage.tiny import make_tiny_lora, make_tiny_pipeline

    copy_data(HERE, out, (96, 64), seed)
    models = out / "models"
    t2i = make_tiny_pipeline(models / "qwen-image", seed=seed)
    make_tiny_pipeline(models / "qwen-image-edit", edit=True, seed=seed + 1)
    for i, name in enumerate(("anime-lora", "realism-lora", "poster-lora")):
        make_tiny_lora(t2i, models / name, seed=seed + 2 + i)
    single_file_lora(models / "anime-lora")
    write_graphs(HERE, out, GRAPHS, {"shape": SHAPE})
    print(f"wrote tiny Qwen-Image models, data and {', '.join(GRAPHS)} to {out}")


if __name__ == "__main__":
    main()
