"""The diffusers backbone kit: what a plugin needs to turn a diffusers transformer into fieldkit fields.

A backbone plugin keeps only its convention boundary (the forward), its encoders and its tiny-model maker;
the kit holds the rest:

- :mod:`fieldkit.backbones.params`: ``TransformerParams`` (path, subfolder, variant, config, seed, dtype,
  gradient_checkpointing) and ``AdapterParams`` (a LoRA over a base field); subclass them for extra keys.
- :mod:`fieldkit.backbones.field`: ``SharedAdapterField``, one adapter (or the base) of a transformer shared
  by every field over it. A subclass sets ``backbone``, ``model_class``, ``lora_pipeline``, ``lora_targets``,
  ``cond_keys`` (+ ``cond_hint``, ``load_hint``) and writes ``velocity(x, sigma, cond)``; optionally
  ``input_layer()`` (the compute dtype), ``base_sigmas(steps)`` (what the pipeline hands its scheduler),
  ``options()`` (its own constructor keywords), ``build_transformer`` (config checks). The kit's ``forward``
  checks the Cond keys and ``sigma``, switches the adapter, and calls ``velocity``; ``sampling_sigmas``
  gives the pipeline's sigmas.
  ``EditField`` adds the ``edit`` option (a T2I or an edit field, refusing an edit batch without
  ``cond['source']``); ``PackedEditField`` is one for 2x2-packed backbones with linear base sigmas.
- :mod:`fieldkit.backbones.build`: ``load_or_build(FieldClass, params, ctx, **options)`` and
  ``adapter_field(FieldClass, params, ctx, kind)``: the bodies of a backbone's source factories.
- :mod:`fieldkit.backbones.register`: ``register_sources`` / ``register_buckets``, a backbone's standard
  sources (``NAME``, ``NAME.edit``, ``NAME.lora``) and buckets (``NAME.prompts``, ``NAME.edits``) registered
  from a small description (``Sources``, ``Buckets``) of what differs.
- :mod:`fieldkit.backbones.loading`: loading (dtype checked, nothing fetched) and the scheduler config of a
  pipeline folder, refused when fieldkit's Euler sampler cannot reproduce it.
- :mod:`fieldkit.backbones.schedule`: ``pipeline_sigmas`` / ``scheduler_sigmas``, the sigmas a pipeline
  samples with (dynamic shifting included).
- :mod:`fieldkit.backbones.prompts`: ``fingerprint``, ``cached`` and ``CachedBucket``, a data bucket of
  encoded prompts cached to safetensors.
- :func:`fieldkit.ops.guidance.cond_and_uncond`: the cond + uncond batched call of a guidance operator.

LoRA itself (adapters, merged rollouts, files) is :mod:`fieldkit.models.lora`. docs/plugins.md walks through
adding a backbone. Importing this package imports nothing heavy; torch and diffusers come with the modules.
"""
