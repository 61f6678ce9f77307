"""Parameter-space weight merging, ``theta = sum_i w_i theta_i`` with ``sum_i w_i = 1``.

Non-negative weights give the weight-merge baseline (an average). Negative weights give task arithmetic:
for two fine-tunes ``a`` and ``b`` of one ``base``, ``a + b - base = base + (a - base) + (b - base)`` is the
merge of ``[a, b, base]`` with weights ``[1, 1, -1]``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn

from fieldkit.errors import FieldkitError

M = TypeVar("M", bound=nn.Module)


def merge_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """Weights divided by their sum (equal when ``None``): finite, any sign, with a positive sum.

    Weights whose sum overflows (``1e308, 1e308``) are scaled by the largest first, so that they are the
    average they mean; errors quote the weights as given."""
    values = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(values) != count:
        raise FieldkitError(f"{count} models to merge but {len(values)} weights", hint="give one weight each")
    if not all(math.isfinite(w) for w in values):
        raise FieldkitError(
            f"merge weights must be finite numbers, got {values}",
            hint="give one number per model, e.g. -w 0.5 -w 0.5 (not nan or inf)",
        )
    # unscaled when the sum is finite: the same bits as ever for every merge that worked before
    scale = 1.0 if math.isfinite(sum(values)) else max(abs(w) for w in values)
    scaled = [w / scale for w in values]
    total = sum(scaled)
    if total <= 0:
        raise FieldkitError(
            f"merge weights must have a positive sum (they are divided by it), got {values} "
            f"(sum {total * scale:g})",
            hint="an average has weights >= 0; task arithmetic a + b - base is weights [1, 1, -1]",
        )
    return [w / total for w in scaled]


def merge_state_dicts(
    states: Sequence[dict[str, Tensor]], weights: Sequence[float] | None = None
) -> dict[str, Tensor]:
    """``sum_i w_i state_i`` over floating tensors (others from the first); keys and shapes must match, and
    every floating tensor must be finite, in the states and in the merge (a sum may overflow its dtype)."""
    if not states:
        raise FieldkitError("nothing to merge")
    ws = merge_weights(weights, len(states))
    first = states[0]
    for i, other in enumerate(states[1:], start=1):
        if other.keys() != first.keys():
            diff = sorted(set(other) ^ set(first))[:3]
            raise FieldkitError(
                f"model {i} has other weights than model 0 ({', '.join(diff)}, ...)",
                hint="only models of one architecture can be merged",
            )
        bad = [k for k in first if other[k].shape != first[k].shape]
        if bad:
            raise FieldkitError(
                f"model {i} differs in shape from model 0 at {bad[0]}",
                hint="only models of one architecture and size can be merged",
            )
    merged = {}
    for key, value in first.items():
        if value.is_floating_point():
            _check_finite([s[key] for s in states], key)
            acc = torch.stack([w * s[key].to(torch.float32) for w, s in zip(ws, states, strict=True)]).sum(0)
            merged[key] = acc.to(value.dtype)
            if not _finite(merged[key]):
                raise FieldkitError(
                    f"the merge overflows {value.dtype} at {key}: its weights are too large for the models",
                    hint="merge with smaller weights (they are divided by their sum; negative ones add up)",
                )
        else:
            merged[key] = value.clone()
    return merged


def _finite(tensor: Tensor) -> bool:
    """Whether every value of ``tensor`` is finite (a meta tensor, a shape without values, is)."""
    return tensor.is_meta or bool(torch.isfinite(tensor).all())


def _check_finite(tensors: Sequence[Tensor], key: str) -> None:
    """Refuse a NaN or infinite value at ``key`` in any of the models (named by their index)."""
    for i, tensor in enumerate(tensors):
        if not _finite(tensor):
            raise FieldkitError(
                f"model {i} holds NaN or infinite values at {key}: a merge with it would be NaN",
                hint="leave that model out of the merge; a model trained into NaNs must be trained again",
            )


def standalone(model: M) -> M:
    """``model`` itself, or, when it runs LoRA adapters, a plain copy with them merged: ``W + (alpha / r)
    B A`` in place of each adapted weight (what merging the weights of a LoRA teacher means)."""
    from fieldkit.models.lora import merge_and_strip, tuner_layers

    if not tuner_layers(model):
        return model
    plain = copy.deepcopy(model)
    merge_and_strip(plain)
    return plain


def merge_models(models: Sequence[M], weights: Sequence[float] | None = None) -> M:
    """A new model (a copy of the first) holding ``sum_i w_i theta_i`` (weights normalised to sum 1); a model
    with LoRA adapters counts with its adapters merged (:func:`standalone`)."""
    if not models:
        raise FieldkitError("nothing to merge")
    models = [standalone(m) for m in models]
    kinds = {type(m).__name__ for m in models}
    if len(kinds) > 1:
        raise FieldkitError(f"cannot merge models of different classes: {', '.join(sorted(kinds))}")
    merged = copy.deepcopy(models[0])
    merged.load_state_dict(merge_state_dicts([m.state_dict() for m in models], weights))
    return merged
