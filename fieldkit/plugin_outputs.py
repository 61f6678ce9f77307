"""What a plugin returns, checked where it enters the core.

A factory's product is checked against its kind when the graph is built (:mod:`fieldkit.graph.builder`);
these check what those objects return while a run uses them: a router's plan, a method's loss, a metric's
values, a data bucket's batches and a field's velocities. Each checker takes ``who`` (the place and the
plugin, as :func:`who` writes it: ``graph.yaml:12: method: method type 'x' (plugin 'y')``) and raises one
:class:`~fieldkit.errors.PluginError` that starts with it; a value that passes is returned (metric values
as plain floats). Plugin authors call the same checkers in their tests (:mod:`fieldkit.testing`).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import torch
from torch import Tensor

from fieldkit.cond import Cond
from fieldkit.data import Batch
from fieldkit.errors import PluginError
from fieldkit.protocols import LossOutput


def who(where: str, kind: str, type_name: str, plugin: str) -> str:
    """The head of a checker's message: ``WHERE: KIND type 'TYPE' (plugin 'PLUGIN')``."""
    return f"{where}: {kind} type {type_name!r} (plugin {plugin!r})"


def _kind(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")


def check_plan(plan: object, routes: int, micro_batches: int, who: str) -> list[int]:
    """A router's plan: a list of route indices in ``[0, routes)``, one per micro-batch of the update (at
    least ``micro_batches``, at most ``max(micro_batches, routes)``: a router may visit every route)."""
    longest = max(micro_batches, routes)
    hint = (
        f"plan(micro_batches, generator, step) returns a list of ints in [0, {routes}), one per micro-batch "
        f"({micro_batches} to {longest} of them)"
    )
    if not isinstance(plan, list | tuple):
        raise PluginError(f"{who}: plan() returned {_kind(plan)}, not a list of route indices", hint=hint)
    for i, index in enumerate(plan):
        if isinstance(index, bool) or not isinstance(index, int | numbers.Integral):
            raise PluginError(f"{who}: plan() entry {i} is {index!r} ({_kind(index)}), not an int", hint=hint)
        if not 0 <= int(index) < routes:
            raise PluginError(
                f"{who}: plan() entry {i} is {int(index)}, outside the {routes} route(s) [0, {routes})",
                hint=hint,
            )
    if not micro_batches <= len(plan) <= longest:
        raise PluginError(
            f"{who}: plan() returned {len(plan)} route indices for an update of {micro_batches} "
            f"micro-batch(es) over {routes} route(s)",
            hint=hint,
        )
    return [int(index) for index in plan]


def check_loss(out: object, who: str) -> LossOutput:
    """A method's loss: a :class:`LossOutput` whose ``loss`` is a floating-point scalar tensor with a
    gradient path (its finiteness is the bad-step policy's to judge)."""
    hint = (
        "loss(inputs) returns LossOutput(loss=...) with a scalar loss computed from inputs.student's forward"
    )
    if not isinstance(out, LossOutput):
        raise PluginError(f"{who}: loss() returned {_kind(out)}, not a LossOutput", hint=hint)
    loss = out.loss
    if not isinstance(loss, Tensor) or not loss.is_floating_point() or loss.numel() != 1:
        raise PluginError(f"{who}: its loss is {_kind(loss)}, not a floating-point scalar tensor", hint=hint)
    if not loss.requires_grad:
        raise PluginError(
            f"{who}: its loss has no gradient (it is detached from the student, or computed without grad)",
            hint=hint,
        )
    return out


def check_gradient_reaches(params: list[torch.nn.Parameter], who: str) -> None:
    """After the backward of an update: some trainable parameter of the student received a gradient."""
    if params and all(p.grad is None for p in params):
        raise PluginError(
            f"{who}: its loss's gradient does not reach the student (no trainable parameter got a gradient)",
            hint="compute the loss from inputs.student(...) (the forward with gradients), not from policy or "
            "a copy",
        )


def check_metric_values(values: object, who: str) -> dict[str, float]:
    """A metric's values: a mapping of names to numbers (Python, numpy or one-element tensor scalars), as
    floats."""
    hint = "metric(samples, batch) returns {name: number}, e.g. {'score': 0.93}"
    if not isinstance(values, Mapping):
        raise PluginError(f"{who}: returned {_kind(values)}, not a mapping of names to numbers", hint=hint)
    out: dict[str, float] = {}
    for name, value in values.items():
        if not isinstance(name, str):
            raise PluginError(f"{who}: a value is named {name!r} ({_kind(name)}), not a string", hint=hint)
        if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype.is_complex:
            value = value.item()
        elif (
            hasattr(value, "item") and getattr(value, "size", None) == 1
        ):  # a numpy scalar or 1-element array
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise PluginError(f"{who}: value {name!r} is {_kind(value)}, not a number", hint=hint)
        out[name] = float(value)
    return out


def check_batch(batch: object, size: int, who: str) -> Batch:
    """A data bucket's batch: a :class:`~fieldkit.data.Batch` whose ``cond`` is a :class:`~fieldkit.Cond` and
    whose every part has ``size`` rows (an empty Cond: an unconditional bucket)."""
    hint = "sample(batch_size, generator) returns fieldkit.data.Batch(cond=Cond(...)) of batch_size rows"
    if not isinstance(batch, Batch):
        raise PluginError(f"{who}: sample({size}) returned {_kind(batch)}, not a Batch", hint=hint)
    problems = []
    if not isinstance(batch.cond, Cond):
        problems.append(f"its cond is {_kind(batch.cond)}, not a Cond")
    elif batch.cond.batch_size not in (None, size):
        problems.append(f"its cond has {batch.cond.batch_size} rows")
    for part in ("target", "source"):
        value = getattr(batch, part)
        if value is None:
            continue
        if not isinstance(value, Tensor) or value.dim() == 0:
            problems.append(f"its {part} is {_kind(value)}, not a batched tensor")
        elif value.shape[0] != size:
            problems.append(f"its {part} has {value.shape[0]} rows")
    if problems:
        raise PluginError(
            f"{who}: sample({size}) returned a batch that does not fit: {'; '.join(problems)}", hint=hint
        )
    return batch


def check_velocity(v: object, x: Tensor, who: str, context: str = "") -> Tensor:
    """A field's output for states ``x``: a floating-point tensor shaped like ``x`` (``context``: what the
    states were, for the message)."""
    if not isinstance(v, Tensor) or tuple(v.shape) != tuple(x.shape) or not v.is_floating_point():
        raise PluginError(
            f"{who}: returned {_kind(v)} for states of shape {list(x.shape)}{context}",
            hint="a field returns a floating-point velocity tensor shaped like its input x",
        )
    if not bool(torch.isfinite(v).all()):
        raise PluginError(
            f"{who}: returned NaN or infinite velocities for states of shape {list(x.shape)}{context}; "
            "every update against it would be non-finite",
            hint="check the field's weights (a checkpoint trained into NaNs?) and its dtype (float16 "
            "overflows)",
        )
    return v
