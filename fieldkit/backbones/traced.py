"""Replayed passes (``run.trace``): a transformer's no-grad forward recorded once as its ops, then run again
from the recording without the Python around them.

A no-grad forward of a small diffusers transformer on the CPU spends about a quarter of its time in Python
(module calls, argument handling, diffusers' and peft's bookkeeping) rather than in its ops
(docs/performance.md, sections 12 and 14). ``torch.jit.trace`` records the ops one call runs; replaying the
recording runs the same ops from C++: the tiny SD3 transformer's forward goes 1.3x faster, its output equal
bit for bit. A DanceOPD update calls the student ~11 times without gradients (the rollout) and each teacher
once, so these are the passes replayed. The forwards with gradients stay eager.

A recording is only valid for what it saw, so one is made per **key** and used only under that key:

- the inputs' names, shapes and dtypes, and the values of non-tensor arguments;
- the model's structure: every submodule (identity, class, ``training``), its parameter and buffer slots,
  its attention processor; a structure with hooks, a compiled submodule, or parameters that are not plain
  CPU tensors (FSDP shards) is not recorded;
- the state of its peft layers (active, disabled and merged adapters, scales), so the merged rollout of a
  LoRA student (:func:`~fieldkit.models.lora.merged_lora`) and the unmerged forward are recorded apart;
- the attention backend (:mod:`fieldkit.attention`) and inference mode.

Parameters and buffers are *inputs* of the recording, read from their slots at each call: weights the
optimizer changed and the merged copies ``merged_lora`` swaps in are what the replay uses. A replay runs
TorchScript's plain plan, without its optimising passes (``torch.jit.optimized_execution(False)``, set per
replay; the flag is thread-local): with no CPU fusion in PyTorch's CPU builds they buy no speed here, and
skipping them makes the first call cheaper, keeps no profiling and optimised plans beside the plain one and
runs the same plan from the first replay on (docs/performance.md, section 14). On its first call under a key
the recording is replayed once and compared with the eager forward under the same random state; if any
output differs in any bit, that key stays eager and a warning says so. Recording runs the model's Python
once more than the caller asked for (a side effect in a forward happens once extra). Only backbones whose
forward branches on shapes and structure alone, never on tensor values, opt in
(:attr:`SharedAdapterField.traceable`, tested equal to eager): a value-dependent branch would be frozen into
the recording. CPU only, no autocast: elsewhere (and with ``run.compile``, which replaces the eager path)
every pass is eager.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fieldkit.attention import current_backend

#: A parameter or buffer slot: the module's ``_parameters`` or ``_buffers`` dict and the name in it.
Slot = tuple[dict[str, Any], str]
Recording = Callable[..., Any]


@dataclass
class Structure:
    """What one walk of a model found: its parameter and buffer slots, its peft layers and a fingerprint
    of everything else a recording depends on; or ``refusal``, why it cannot be recorded."""

    slots: list[Slot] = field(default_factory=list)
    layers: list[Any] = field(default_factory=list)
    fingerprint: Hashable = ()
    refusal: str | None = None


def _global_hooks() -> bool:
    from torch.nn.modules import module as m

    return bool(m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks)


#: Tensor types a recording takes as inputs (not DTensor shards or other subclasses).
_PLAIN = (Tensor, nn.Parameter, nn.Buffer)


def _plain_cpu(tensor: Tensor) -> bool:
    return type(tensor) in _PLAIN and tensor.is_cpu


def walk(model: nn.Module) -> Structure:
    """The slots, peft layers and fingerprint of ``model``, or why it cannot be recorded.

    One pass over the modules' own dicts: at ~1 us a module it is a small part of a pass, and it runs once
    per model and :func:`replayed_passes` block."""
    tuner = _tuner_layer_types()
    if _global_hooks():
        return Structure(refusal="global module hooks are registered")
    s = Structure()
    parts: list[Hashable] = []
    for m in _modules(model):
        d = vars(m)
        if d["_forward_hooks"] or d["_forward_pre_hooks"] or d["_backward_hooks"] or d["_backward_pre_hooks"]:
            return _refused(model, m, "has hooks")
        if d.get("_compiled_call_impl") is not None or "_diffusers_hook" in d:
            return _refused(model, m, "is compiled or wrapped by diffusers hooks")
        for slots in (d["_parameters"], d["_buffers"]):
            for key, tensor in slots.items():
                if tensor is None:
                    continue
                if not _plain_cpu(tensor):
                    return _refused(model, m, f"holds {key}, which is not a plain CPU tensor")
                s.slots.append((slots, key))
                parts.append((id(slots), key))
        if isinstance(m, tuner):
            s.layers.append(m)
        processor = d.get("processor")  # a plain attribute (an attention processor) or none
        parts.append((id(m), type(m), d["training"], None if processor is None else id(processor)))
    s.fingerprint = tuple(parts)
    return s


def _tuner_layer_types() -> tuple[type, ...]:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no peft: no peft layers
        return ()
    return (BaseTunerLayer,)


def _refused(model: nn.Module, m: nn.Module, why: str) -> Structure:
    name = next(n for n, sub in model.named_modules() if sub is m) or "(root)"
    return Structure(refusal=f"module {name} {why}")


def _modules(model: nn.Module) -> Iterator[nn.Module]:
    """Every module of ``model`` once, in a fixed order: ``model.modules()`` without its nested generators."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        m = stack.pop()
        if id(m) not in seen:
            seen.add(id(m))
            yield m
            stack.extend(c for c in reversed(m._modules.values()) if c is not None)


def _peft_state(layers: list[Any]) -> Hashable:
    return tuple(
        (
            tuple(layer.active_adapters),
            layer.disable_adapters,
            tuple(layer.merged_adapters),
            tuple(sorted(getattr(layer, "scaling", {}).items())),
        )
        for layer in layers
    )


def _constant(value: Any) -> Hashable | None:
    """``value`` as a hashable key part, or ``None`` if a recording cannot take it as a constant."""
    if value is None or isinstance(value, bool | int | float | str):
        return (type(value), value)
    if isinstance(value, list | tuple):
        items = [_constant(v) for v in value]
        return None if any(i is None for i in items) else (type(value), tuple(items))
    return None


#: Each model's recordings by key (``None``: that key runs eager); they outlive a scope (one update) and die
#: with their model.
_REPLAYS: weakref.WeakKeyDictionary[nn.Module, dict[Hashable, Recording | None]] = weakref.WeakKeyDictionary()
#: The scope of replayed passes, while one is open: the models walked in it.
_SCOPE: ContextVar[dict[int, Structure] | None] = ContextVar("fieldkit_traced_scope", default=None)


@contextlib.contextmanager
def replayed_passes(enabled: bool = True) -> Iterator[None]:
    """Within the block, :func:`call` replays the no-grad passes it can. A model's structure is walked once
    per block (its first call), so nothing may restructure a model while the block runs: the engine opens
    one per update."""
    token = _SCOPE.set({} if enabled else None)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def _eligible(model: nn.Module, kwargs: dict[str, Any]) -> Structure | None:
    scope = _SCOPE.get()
    if scope is None or torch.is_grad_enabled() or torch._C._get_tracing_state() is not None:
        return None
    if torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
        return None
    if not all(_plain_cpu(v) for v in kwargs.values() if isinstance(v, Tensor)):
        return None
    structure = scope.get(id(model))
    if structure is None:
        structure = scope[id(model)] = walk(model)
    return None if structure.refusal is not None else structure


def call(model: nn.Module, **kwargs: Any) -> Any:
    """``model(**kwargs)``, replayed from a recording where this is a no-grad pass inside
    :func:`replayed_passes` that can be recorded; otherwise eager."""
    structure = _eligible(model, kwargs)
    if structure is None:
        return model(**kwargs)
    names = sorted(k for k, v in kwargs.items() if isinstance(v, Tensor))
    constants = {k: v for k, v in kwargs.items() if not isinstance(v, Tensor)}
    parts = {k: _constant(v) for k, v in constants.items()}
    if any(p is None for p in parts.values()):
        return model(**kwargs)
    tensors = [kwargs[k] for k in names]
    key = (
        structure.fingerprint,
        _peft_state(structure.layers),
        current_backend(),
        torch.is_inference_mode_enabled(),
        tuple((k, tuple(t.shape), t.dtype) for k, t in zip(names, tensors, strict=True)),
        tuple(sorted(parts.items())),
    )
    replays = _REPLAYS.setdefault(model, {})
    weights = [slots[k] for slots, k in structure.slots]
    if key in replays:
        recording = replays[key]
        return model(**kwargs) if recording is None else _replay(recording, weights, tensors)
    recording, out = _first_call(model, structure, kwargs, names, constants, weights, tensors)
    replays[key] = recording
    return out


def _first_call(
    model: nn.Module,
    structure: Structure,
    kwargs: dict[str, Any],
    names: list[str],
    constants: dict[str, Any],
    weights: list[Tensor],
    tensors: list[Tensor],
) -> tuple[Recording | None, Any]:
    """Record ``model(**kwargs)`` (its tensor arguments ``names``, in that order, are ``tensors``; the rest
    are ``constants``), check a replay against the eager pass (same random state) and return the recording
    (``None`` if any output differs) with the eager output."""
    # The recording keeps the function it traced: ``live`` is emptied after tracing, so that it keeps
    # neither the model nor its parameters alive (recordings die with their model).
    live: list[Any] = [model, structure.slots]

    def forward(*flat: Tensor) -> Any:
        module, slots = live
        kept = [d[k] for d, k in slots]
        for (d, k), t in zip(slots, flat, strict=False):
            d[k] = t
        try:
            return module(**dict(zip(names, flat[len(slots) :], strict=True)), **constants)
        finally:
            for (d, k), t in zip(slots, kept, strict=True):
                d[k] = t

    state = torch.get_rng_state()
    with warnings.catch_warnings():
        # The tracer's warnings (its deprecation notice; values read from shapes) are decided by the check.
        warnings.simplefilter("ignore")
        try:
            recording = torch.jit.trace(  # type: ignore[no-untyped-call]
                forward, (*weights, *tensors), check_trace=False, strict=False
            )
        except Exception as exc:  # any failure to record leaves this key eager
            torch.set_rng_state(state)
            _warn(model, f"it could not be recorded ({type(exc).__name__}: {exc})")
            return None, model(**kwargs)
        finally:
            live.clear()
        torch.set_rng_state(state)
        replayed = _replay(recording, weights, tensors)
    torch.set_rng_state(state)
    out = model(**kwargs)
    if _equal(replayed, out):
        return recording, out
    _warn(model, "its replay differs from the eager pass")
    return None, out


def _replay(recording: Recording, weights: list[Tensor], tensors: list[Tensor]) -> Any:
    """Run ``recording`` on ``weights`` and ``tensors`` with TorchScript's plain plan (no optimising passes:
    one plan, built at the first replay)."""
    with torch.jit.optimized_execution(False):  # type: ignore[attr-defined]  # not in torch.jit.__all__
        return recording(*weights, *tensors)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return False


def _warn(model: nn.Module, why: str) -> None:
    warnings.warn(
        f"run.trace: {type(model).__name__}'s pass with these inputs runs eager: {why}",
        RuntimeWarning,
        stacklevel=4,
    )
