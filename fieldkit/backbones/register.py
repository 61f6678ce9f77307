"""The standard registrations of a diffusers backbone plugin, from a small description of the backbone.

A backbone ``NAME`` whose package ``PKG`` has a ``PKG.field`` module (its field class) and a ``PKG.data``
module (``Encoding``, ``prompt_bucket``, ``edit_bucket``) registers, with :func:`register_sources` and
:func:`register_buckets`:

- sources ``NAME`` (the transformer as a field), ``NAME.<edit>`` (an edit field, from its own folder or over
  a ``base`` field's transformer) and ``NAME.lora`` (a LoRA over a base field, its ``task`` optional);
- datasets ``NAME.prompts`` and ``NAME.edits`` (prompts and edit pairs with cached features).

Only what differs between backbones is described: names, params, descriptions, and the field's own
keywords (FLUX's distilled ``guidance``). Importing this module imports nothing heavy; the field and data
modules are imported when a factory runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as default
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from fieldkit.graph.builder import BuildContext
    from fieldkit.protocols import RegisterDataset, RegisterSource


def _no_options(params: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Sources:
    """A backbone's three sources: ``field`` is ``"module:Class"`` (imported when a factory runs); ``base``
    and ``edit`` are ``(params, description)``: a source's params model and what ``fieldkit plugins`` says of
    it; ``lora`` is the LoRA source's params model.
    ``options(params)`` are the field's own keywords from any of the three params (default: none);
    ``edit_defaults`` are keywords an edit field loaded on its own takes where ``options`` gives none."""

    name: str
    field: str
    base: tuple[type[BaseModel], str]
    edit: tuple[type[BaseModel], str]
    lora: type[BaseModel]
    edit_name: str = "edit"
    options: Callable[[Any], dict[str, Any]] = _no_options
    edit_defaults: Mapping[str, Any] = default(default_factory=dict)

    def field_class(self) -> Any:
        module, _, cls = self.field.partition(":")
        return getattr(importlib.import_module(module), cls)

    def build(self, params: Any, ctx: BuildContext) -> Any:
        from fieldkit.backbones.build import load_or_build

        return load_or_build(self.field_class(), params, ctx, **self.options(params))

    def build_edit(self, params: Any, ctx: BuildContext) -> Any:
        from fieldkit.backbones.build import load_or_build
        from fieldkit.backbones.field import as_shared_field

        cls = self.field_class()
        if params.base is None:
            options = {**self.edit_defaults, **self.options(params)}
            return load_or_build(cls, params, ctx, edit=True, **options)
        what = f"{self.name}.{self.edit_name}'s base {str(params.base)!r}"
        base = as_shared_field(ctx.field(params.base), cls, what)
        return base.spawn(base.adapter, edit=True, **self.options(params))

    def build_lora(self, params: Any, ctx: BuildContext) -> Any:
        from fieldkit.backbones.build import adapter_field

        field = adapter_field(self.field_class(), params, ctx, f"{self.name}.lora")
        task = {} if params.task is None else {"edit": params.task == "edit"}
        options = {**task, **self.options(params)}
        return field.spawn(field.adapter, **options) if options else field


def register_sources(register: RegisterSource, sources: Sources) -> None:
    """Register ``sources``' three sources (``NAME``, ``NAME.<edit_name>``, ``NAME.lora``)."""
    name = sources.name
    register(name, sources.build, sources.base[0], description=sources.base[1])
    edit_name = f"{name}.{sources.edit_name}"
    register(edit_name, sources.build_edit, sources.edit[0], description=sources.edit[1])
    lora = f"A LoRA adapter over a {name} base field; N adapters share one base transformer in memory."
    register(f"{name}.lora", sources.build_lora, sources.lora, description=lora)


@dataclass(frozen=True)
class Buckets:
    """A backbone's two data buckets: ``data`` is the module with ``Encoding``, ``prompt_bucket(file,
    encoding, template=, cache=)`` and ``edit_bucket(pairs, encoding, template=, cache=, ...)``; each
    ``(params, description)`` pair as in :class:`Sources`; ``edit_options`` names the edit params' own keys
    handed to ``edit_bucket`` as keywords (FLUX's ``auto_resize``)."""

    name: str
    data: str
    prompts: tuple[type[BaseModel], str]
    edits: tuple[type[BaseModel], str]
    edit_options: tuple[str, ...] = ()

    def _encoding(self, params: Any, ctx: BuildContext) -> tuple[Any, Any]:
        from fieldkit.backbones.build import encoding

        module = importlib.import_module(self.data)
        return module, encoding(module.Encoding, params, ctx)

    def build_prompts(self, params: Any, ctx: BuildContext) -> Any:
        module, encoded = self._encoding(params, ctx)
        cache = ctx.path(params.cache) if params.cache else None
        return module.prompt_bucket(ctx.path(params.file), encoded, template=params.template, cache=cache)

    def build_edits(self, params: Any, ctx: BuildContext) -> Any:
        module, encoded = self._encoding(params, ctx)
        cache = ctx.path(params.cache) if params.cache else None
        options = {key: getattr(params, key) for key in self.edit_options}
        return module.edit_bucket(
            ctx.path(params.pairs), encoded, template=params.template, cache=cache, **options
        )


def register_buckets(register: RegisterDataset, buckets: Buckets) -> None:
    """Register ``buckets``' two datasets (``NAME.prompts``, ``NAME.edits``)."""
    name = buckets.name
    register(f"{name}.prompts", buckets.build_prompts, buckets.prompts[0], description=buckets.prompts[1])
    register(f"{name}.edits", buckets.build_edits, buckets.edits[0], description=buckets.edits[1])
