"""A tiny, random copy of examples/flux that runs on a CPU in seconds (its samples are noise).

    python examples/flux/make_tiny.py OUT
    fieldkit validate OUT/graph.yaml
    fieldkit distill OUT/graph.yaml --dry-run
    fieldkit distill OUT/graph.yaml --out OUT/runs/graph

Writes, under OUT, what the graphs expect at the same relative paths: models/flux1-dev (a tiny random
FluxPipeline) and models/flux1-kontext-dev (a tiny random FluxKontextPipeline of the same shape), random
LoRAs of their transformers (the Kontext edit LoRA in the diffusers / peft layout, the watercolor one as a
single ai-toolkit-style .safetensors file), the prompts and edit-pair files, random 96 x 64 source images,
and graph.yaml / loras.yaml rewritten for the tiny models: latent shape [16, 8, 12], float32, 16 T5
tokens, sources at their own size, 4 sampling steps, rank-4 LoRA student, 2 training steps on the CPU.
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
    from fieldkit_flux.tiny import make_tiny_lora, make_tiny_pipeline

    copy_data(HERE, out, (96, 64), seed)
    models = out / "models"
    dev = make_tiny_pipeline(models / "flux1-dev", seed=seed)
    kontext = make_tiny_pipeline(models / "flux1-kontext-dev", kontext=True, seed=seed + 1)
    make_tiny_lora(kontext, models / "kontext-edit-lora", seed=seed + 2)
    for i, name in enumerate(("watercolor-lora", "pixel-art-lora", "detail-lora")):
        make_tiny_lora(dev, models / name, seed=seed + 3 + i)
    single_file_lora(models / "watercolor-lora")
    data, edits = {"shape": SHAPE, "max_sequence_length": 16}, {"auto_resize": False}
    write_graphs(HERE, out, GRAPHS, data, by_type={"flux.edits": edits})
    print(f"wrote tiny FLUX.1 models, data and {', '.join(GRAPHS)} to {out}")


if __name__ == "__main__":
    main()
