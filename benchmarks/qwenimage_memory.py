"""Memory of Qwen-Image in fieldkit: parameter counts of the released configs (counted on the meta device, no
weights needed), what sharing one base between LoRA teachers saves, and measured bytes on the tiny models.

    .venv/bin/python benchmarks/qwenimage_memory.py [--rank 64] [--adapters 3] [--config PATH/config.json]

Prints the tables of docs/qwenimage.md (run at ranks 16, 64 and 128). The configs are the released folders'
(fieldkit_qwenimage.configs; count your own with --config); GiB figures are parameter bytes only, not
activations.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fieldkit.backbones.memory import report, shared_and_copied_bytes


def measured_tiny(adapters: int) -> tuple[int, int]:
    """Parameter bytes of the tiny edit base with ``adapters`` LoRA fields over it, and of as many
    copies."""
    from fieldkit_qwenimage.field import QwenImageField
    from fieldkit_qwenimage.tiny import make_tiny_lora, make_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        root = make_tiny_pipeline(Path(tmp) / "edit", edit=True)
        loras = [make_tiny_lora(root, Path(tmp) / f"lora{i}", seed=i) for i in range(adapters)]
        return shared_and_copied_bytes(QwenImageField(QwenImageField.load_transformer(root)), loras)


def main(argv: list[str] | None = None) -> None:
    from fieldkit_qwenimage.configs import TRANSFORMERS, encoder_parameters
    from fieldkit_qwenimage.field import LORA_TARGETS

    report(
        argv,
        description=__doc__.splitlines()[0],
        model_class="QwenImageTransformer2DModel",
        configs=TRANSFORMERS,
        targets=LORA_TARGETS,
        default_rank=64,
        encoders=encoder_parameters,
        measured=measured_tiny,
        label="tiny Qwen-Image edit (fieldkit_qwenimage.tiny)",
    )


if __name__ == "__main__":
    main()
