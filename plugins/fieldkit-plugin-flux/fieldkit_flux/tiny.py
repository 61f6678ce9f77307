"""Tiny FLUX.1 pipelines built from configs, for tests and the CPU example: no hub, no real weights.

:func:`make_tiny_pipeline` writes a folder that ``FluxPipeline.from_pretrained`` (T2I) or
``FluxKontextPipeline.from_pretrained`` (edit, ``kontext=True``) loads: a tiny ``FluxTransformer2DModel``
(2 heads of 16, one double-stream and one single-stream block, the guidance embedding of FLUX.1-dev), a
tiny ``AutoencoderKL`` (16 latent channels, 8x down, FLUX's scaling and shift), a tiny ``CLIPTextModel``
(the pooled prompt) and ``T5EncoderModel`` (the token features), each with a byte-level tokenizer that
appends its end token as the real ones do, and a flow-matching scheduler with FLUX.1-dev's dynamic shift
(its sequence bounds scaled down to tiny latents). The real vocabularies cannot be fetched offline;
everything else is the real diffusers and transformers code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

LATENT_CHANNELS = 16
TEXT_WIDTH = 32
POOLED_WIDTH = 32
CLIP_LENGTH = 77


def transformer_config(guidance_embeds: bool = True) -> dict[str, Any]:
    """A FLUX transformer of width 32 (2 heads of 16), one double- and one single-stream block."""
    return {
        "patch_size": 1,
        "in_channels": 4 * LATENT_CHANNELS,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": TEXT_WIDTH,
        "pooled_projection_dim": POOLED_WIDTH,
        "guidance_embeds": guidance_embeds,
        "axes_dims_rope": [4, 6, 6],
    }


def scheduler_config(dynamic: bool = True) -> dict[str, Any]:
    """FLUX.1-dev's scheduler (dynamic shift from 0.5 to 1.15) with its sequence bounds scaled to tiny latents
    (16 to 256 tokens, so a few-token latent gets a different shift than a larger one); ``dynamic=False``:
    FLUX.1-schnell's static shift 1."""
    if not dynamic:
        return {"shift": 1.0, "use_dynamic_shifting": False}
    return {
        "shift": 3.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 16,
        "max_image_seq_len": 256,
    }


def tokenizer(bos: str | None, eos: str, pad: str, max_length: int) -> Any:
    """A byte-level BPE tokenizer (256 byte tokens, no merges) that wraps a text as ``[bos] text eos``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = [t for t in (pad, bos, eos) if t is not None]
    vocab = {char: i for i, char in enumerate([*dict.fromkeys(specials), *sorted(alphabet)])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    wrap = f"{bos} $A {eos}" if bos else f"$A {eos}"
    backend.post_processor = processors.TemplateProcessing(
        single=wrap, special_tokens=[(t, vocab[t]) for t in dict.fromkeys(specials)]
    )
    extra = {"bos_token": bos} if bos else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=pad, eos_token=eos, model_max_length=max_length, **extra
    )


def clip_text_encoder(tok: Any) -> Any:
    """A 2-layer CLIP text model of width 32 whose pooled output is its end token's state."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=POOLED_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_LENGTH,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return CLIPTextModel(config).eval()


def t5_text_encoder(tok: Any) -> Any:
    """A 2-layer T5 encoder of width 32 (FLUX reads its last hidden states)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tok),
        d_model=TEXT_WIDTH,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return T5EncoderModel(config).eval()


def make_tiny_pipeline(
    folder: Path, *, kontext: bool = False, dynamic: bool = True, guidance_embeds: bool = True, seed: int = 0
) -> Path:
    """Write a tiny random ``FluxPipeline`` (``FluxKontextPipeline`` with ``kontext``) folder; return it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxPipeline

    from fieldkit.backbones.tiny import flux_vae
    from fieldkit_flux.field import FluxField

    clip_tok = tokenizer("<|startoftext|>", "<|endoftext|>", "<|endoftext|>", CLIP_LENGTH)
    t5_tok = tokenizer(None, "</s>", "<pad>", 512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        parts: dict[str, Any] = {
            "transformer": FluxField.build_transformer(transformer_config(guidance_embeds), seed),
            "scheduler": FlowMatchEulerDiscreteScheduler(**scheduler_config(dynamic)),
            "vae": flux_vae(),
            "text_encoder": clip_text_encoder(clip_tok),
            "tokenizer": clip_tok,
            "text_encoder_2": t5_text_encoder(t5_tok),
            "tokenizer_2": t5_tok,
        }
    pipe = (FluxKontextPipeline if kontext else FluxPipeline)(**parts)
    pipe.save_pretrained(str(folder))
    return folder


def make_tiny_lora(pipeline: Path, out: Path, *, rank: int = 4, seed: int = 0, std: float = 0.05) -> Path:
    """Write a random LoRA (diffusers / peft format, ``B != 0``) of the tiny pipeline's transformer on the
    default targets: a stand-in for a style or edit LoRA trained elsewhere."""
    from fieldkit.plugin_api import random_lora
    from fieldkit_flux.field import LORA_TARGETS, FluxField

    transformer = FluxField.load_transformer(pipeline)
    return random_lora(transformer, LORA_TARGETS, out, rank=rank, seed=seed, std=std)
