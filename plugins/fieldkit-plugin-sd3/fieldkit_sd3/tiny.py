"""Tiny SD3 / SD3.5 pipelines built from configs, for tests and the CPU example: no hub, no real weights.

:func:`make_tiny_pipeline` writes a folder that ``StableDiffusion3Pipeline.from_pretrained`` loads: a tiny
transformer (SD3, or SD3.5 with a dual attention layer and RMS q/k norms), two tiny CLIP text encoders with
projection, a tiny T5 encoder, a flow-matching scheduler with shift 3, and no VAE (latents only). The
tokenizers are real ``CLIPTokenizer`` / ``T5Tokenizer`` classes over tiny character vocabularies built here,
since the real vocabularies cannot be fetched offline: they tokenise lower-case letters, digits and a few
marks, so a tiny text encoder sees different ids for different prompts, which is all a test needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fieldkit_sd3.field import LORA_TARGETS

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789,.:'-"
LATENT_CHANNELS = 4
LATENT_SIZE = 8
T5_TOKENS = 16


def transformer_config(sd35: bool = True) -> dict[str, Any]:
    """A 2-layer transformer on 4 x 8 x 8 latents (patch 2), text width 32, pooled width 64."""
    config: dict[str, Any] = {
        "sample_size": LATENT_SIZE,
        "patch_size": 2,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "num_layers": 2,
        "attention_head_dim": 8,
        "num_attention_heads": 4,
        "joint_attention_dim": 32,
        "caption_projection_dim": 32,
        "pooled_projection_dim": 64,
        "pos_embed_max_size": LATENT_SIZE // 2,
    }
    if sd35:
        config.update(dual_attention_layers=(0,), qk_norm="rms_norm")
    return config


def _tokenizers() -> tuple[Any, Any]:
    from transformers import CLIPTokenizer, T5Tokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in CHARS:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    clip = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(c, -2.0) for c in CHARS] + [("▁" + c, -1.5) for c in CHARS]
    t5 = T5Tokenizer(vocab=pieces, extra_ids=0)
    return clip, t5


def _clip(seed: int, vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=12,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModelWithProjection(config).eval()


def _t5(seed: int, vocab_size: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config).eval()


def make_tiny_pipeline(folder: Path, *, sd35: bool = True, seed: int = 0) -> Path:
    """Write a tiny, randomly initialised SD3 (or SD3.5) pipeline folder (about 0.3 MB) and return it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from fieldkit_sd3.field import SD3Field

    clip_tok, t5_tok = _tokenizers()
    with torch.random.fork_rng(devices=[]):
        pipe = StableDiffusion3Pipeline(
            transformer=SD3Field.build_transformer(transformer_config(sd35), seed=seed),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=None,
            text_encoder=_clip(seed + 1, len(clip_tok)),
            tokenizer=clip_tok,
            text_encoder_2=_clip(seed + 2, len(clip_tok)),
            tokenizer_2=clip_tok,
            text_encoder_3=_t5(seed + 3, len(t5_tok)),
            tokenizer_3=t5_tok,
        )
    pipe.save_pretrained(str(folder))
    return folder


def make_tiny_lora(pipeline: Path, out: Path, *, rank: int = 4, seed: int = 0, std: float = 0.05) -> Path:
    """Write a random LoRA (diffusers / peft format, ``B != 0``) for the tiny pipeline's transformer: a
    stand-in for an edit or style LoRA trained elsewhere."""
    from fieldkit.plugin_api import random_lora
    from fieldkit_sd3.field import SD3Field

    transformer = SD3Field.load_transformer(pipeline)
    return random_lora(transformer, LORA_TARGETS, out, rank=rank, seed=seed, std=std)
