"""A tiny, random copy of examples/zimage that runs on a CPU in seconds (its samples are noise).

    python examples/zimage/make_tiny.py OUT
    fieldkit validate OUT/graph.yaml
    fieldkit distill OUT/graph.yaml --dry-run
    fieldkit distill OUT/graph.yaml --out OUT/runs/graph

Writes, under OUT, what the graphs expect at the same relative paths: models/z-image-omni (a tiny random
ZImageOmniPipeline), models/local-edit-lora, models/global-edit-lora and models/realism-lora (random LoRAs of
its transformer), the prompts and edit-pair files, random 64 x 64 source images, and graph.yaml /
realism.yaml rewritten for the tiny models: latent shape [16, 8, 8], float32, 64 text tokens, 4 sampling
steps, rank-4 LoRA student, 2 training steps on the CPU. Everything else (fields, routes, method) is the
graphs' own, so this checks the real graphs' plumbing end to end.
"""

from __future__ import annotations

from pathlib import Path

from fieldkit.backbones.tiny import copy_data, tiny_args, write_graphs

HERE = Path(__file__).parent
GRAPHS = ("graph.yaml", "realism.yaml")
LORAS = ("local-edit-lora", "global-edit-lora", "realism-lora")
SHAPE = [16, 8, 8]


def main(argv: list[str] | None = None) -> None:
    out, seed = tiny_args(__doc__, argv)
    from fieldkit_zimage.tiny import make_tiny_lora, make_tiny_pipeline

    copy_data(HERE, out, (64, 64), seed)
    omni = make_tiny_pipeline(out / "models" / "z-image-omni", omni=True, seed=seed)
    for i, name in enumerate(LORAS):
        make_tiny_lora(omni, out / "models" / name, seed=seed + 1 + i)
    write_graphs(HERE, out, GRAPHS, {"shape": SHAPE, "max_sequence_length": 64})
    print(f"wrote tiny Z-Image models, data and {', '.join(GRAPHS)} to {out}")


if __name__ == "__main__":
    main()
