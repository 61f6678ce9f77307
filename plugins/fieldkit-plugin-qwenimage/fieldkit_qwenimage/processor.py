"""Qwen2.5-VL's image + text processor of ``QwenImageEditPipeline``, loadable without torchvision.

transformers' ``Qwen2VLProcessor`` declares a video processor, and without torchvision neither constructing
nor loading one works (its class check looks the video processor class up in a registry that needs
torchvision). The edit pipeline only ever passes images, so :class:`ImageTextProcessor` is that processor
with the video part left out: the same ``__call__`` (the image processor's patches, each image token expanded
to its ``grid / merge_size^2`` copies), the same token ids. :func:`load_processor` reads a pipeline's
``processor/`` folder into it, and the pipelines get it passed as their ``processor``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin

from fieldkit.plugin_api import FieldkitError

#: What a pipeline folder's model_index.json and processor config call the processor (a real folder's).
PROCESSOR_CLASS = "Qwen2VLProcessor"


class ImageTextProcessor(Qwen2VLProcessor):  # type: ignore[misc]  # transformers' lazy class is Any to mypy
    """``Qwen2VLProcessor`` for images and text only (no video processor, so no torchvision needed)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None) -> None:
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def load_processor(folder: Path) -> ImageTextProcessor:
    """The processor saved in ``folder`` (a pipeline's ``processor/``): its image processor and tokenizer."""
    if not folder.is_dir():
        raise FieldkitError(
            f"no processor folder at {folder}", hint="point `pipeline` at a QwenImageEditPipeline folder"
        )
    images = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return ImageTextProcessor(images, tokenizer, chat_template=getattr(tokenizer, "chat_template", None))


def save_processor(processor: ImageTextProcessor, pipeline: Path) -> None:
    """Write ``processor`` into the pipeline folder ``pipeline`` as a real one names it (``Qwen2VLProcessor``
    in ``model_index.json`` and the processor config), so the folder reads like a released one."""
    processor.save_pretrained(str(pipeline / "processor"))
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        file = pipeline / "processor" / name
        if file.is_file():
            config = json.loads(file.read_text(encoding="utf-8"))
            if "processor_class" in config:
                config["processor_class"] = PROCESSOR_CLASS
                file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    index = pipeline / "model_index.json"
    config = json.loads(index.read_text(encoding="utf-8"))
    config["processor"] = ["transformers", PROCESSOR_CLASS]
    index.write_text(json.dumps(config, indent=2), encoding="utf-8")
