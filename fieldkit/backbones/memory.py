"""Parameter memory of LoRA teachers that share one base, against full copies: the report that backbone
plugins' benchmark scripts print for their docs (counts on the meta device, so no weights are needed)."""

from __future__ import annotations

import argparse
import copy
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fieldkit.backbones.field import SharedAdapterField, parameter_bytes
from fieldkit.models.lora import lora_parameters

GIB = 1024**3


def count(module: nn.Module) -> int:
    """Parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def shared_and_copied_bytes(base: SharedAdapterField, loras: list[Path]) -> tuple[int, int]:
    """Parameter bytes of ``base`` with the ``loras`` loaded as adapter fields over it, and of as many full
    copies (one per field, each with its adapter merged)."""
    fields = [base] + [base.with_adapter(path, f"lora{i}") for i, path in enumerate(loras)]
    shared = parameter_bytes(nn.ModuleList(fields))
    copies = parameter_bytes(nn.ModuleList(copy.deepcopy(f) for f in fields))
    return shared, copies


def report(
    argv: list[str] | None,
    *,
    description: str,
    model_class: str,
    configs: dict[str, dict[str, Any]],
    targets: tuple[str, ...],
    default_rank: int,
    encoders: Callable[[], dict[str, int]],
    measured: Callable[[int], tuple[int, int]],
    label: str,
) -> None:
    """Print the transformer table (``diffusers.<model_class>`` per config: parameters, bf16 GiB, LoRA
    parameters, base + N adapters against N + 1 copies), the encoder table, and the tiny models' measured
    shared and copied bytes (``measured(N)``). ``--config PATH`` adds a local transformer config."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rank", type=int, default=default_rank, help="LoRA rank of teachers and student")
    parser.add_argument("--adapters", type=int, default=2, help="LoRA teachers over one base")
    parser.add_argument("--config", type=Path, help="also count a local transformer/config.json")
    args = parser.parse_args(argv)
    cls = getattr(importlib.import_module("diffusers"), model_class)
    n, configs = args.adapters, dict(configs)
    if args.config is not None:
        configs[str(args.config)] = dict(cls.load_config(str(args.config.parent)))
    print(
        f"| transformer | parameters | bf16 GiB | LoRA r={args.rank} parameters "
        f"| base + {n} LoRA teachers, GiB | {n + 1} full copies, GiB | saved |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, config in configs.items():
        with torch.device("meta"):
            model = cls.from_config(config)
        params, lora = count(model), lora_parameters(model, args.rank, targets)
        shared = (params + n * lora) * 2 / GIB
        copies = (n + 1) * params * 2 / GIB
        print(
            f"| {name} | {params / 1e9:.2f} B | {params * 2 / GIB:.1f} | {lora / 1e6:.1f} M | {shared:.1f} "
            f"| {copies:.1f} | {copies - shared:.1f} GiB |"
        )
    print()
    print("| encoder | parameters | bf16 GiB |")
    print("|---|---|---|")
    for name, params in encoders().items():
        print(f"| {name} | {params / 1e9:.3f} B | {params * 2 / GIB:.2f} |")
    print()
    shared, copies = measured(n)
    print(
        f"measured, {label}, base + {n} LoRA fields: {shared:,} bytes shared vs {copies:,} bytes as "
        f"{n + 1} copies ({1 - shared / copies:.0%} saved)"
    )
