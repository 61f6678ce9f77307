"""The factories of a backbone's sources: a transformer loaded or built, and a LoRA adapter over a base."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, TypeVar

from fieldkit.backbones.field import SharedAdapterField, as_shared_field
from fieldkit.backbones.loading import DTYPES, scheduler_config
from fieldkit.backbones.params import AdapterParams, BucketParams, TransformerParams
from fieldkit.backbones.prompts import Encoding

if TYPE_CHECKING:
    from fieldkit.graph.builder import BuildContext

F = TypeVar("F", bound=SharedAdapterField)
E = TypeVar("E", bound=Encoding)


def load_or_build(cls: type[F], params: TransformerParams, ctx: BuildContext, **options: Any) -> F:
    """A ``cls`` field over a ``cls.model_class`` transformer loaded from ``params.path`` (with the folder's
    scheduler config, when it has one) or built from ``params.config``; ``options`` go to ``cls``."""
    dtype = DTYPES[params.dtype] if params.dtype else None
    scheduler = None
    if params.path is not None:
        path = ctx.path(params.path)
        base = ctx.path(params.base_config) if params.base_config else None
        transformer = cls.load_transformer(path, params.subfolder, dtype, params.variant, base)
        scheduler = scheduler_config(base if path.is_file() and base is not None else path)
    else:
        transformer = cls.build_transformer(params.config or {}, params.seed, dtype)
    if params.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return cls(transformer, scheduler=scheduler, **options)


def adapter_field(cls: type[F], params: AdapterParams, ctx: BuildContext, kind: str) -> F:
    """The LoRA at ``params.path`` as a field over the ``cls`` field ``params.base`` (one base transformer,
    N adapters); the adapter is named ``params.adapter``, else after the LoRA's folder or file."""
    base = as_shared_field(ctx.field(params.base), cls, f"{kind}'s base {str(params.base)!r}")
    path = ctx.path(params.path)
    name = params.adapter or re.sub(r"\W", "_", path.name.removesuffix(".safetensors"))
    return base.with_adapter(path, name, scale=params.scale, weight_name=params.weight_name)


def encoding(cls: type[E], params: BucketParams, ctx: BuildContext) -> E:
    """The ``cls`` encoding of a bucket's ``params`` (paths resolved against the graph, on ``ctx``'s device);
    ``max_sequence_length`` when the params have one."""
    extra = (
        {"max_sequence_length": params.max_sequence_length} if hasattr(params, "max_sequence_length") else {}
    )
    return cls(
        ctx.path(params.pipeline),
        tuple(params.shape),
        negative_prompt=params.negative_prompt,
        dtype=DTYPES[params.dtype],
        device=ctx.device,
        **extra,
    )
