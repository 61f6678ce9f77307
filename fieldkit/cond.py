"""``Cond``: the batch-aligned conditioning that travels beside a flow state.

A ``Cond`` maps names (``text``, ``pooled``, ``source``, ``mask``, ``label``, ...) to tensors whose first
dimension is the batch. It can be indexed, concatenated, repeated and moved between devices as one object,
so operators never need to know which conditions a field reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor


class Cond(Mapping[str, Tensor]):
    """An immutable, batch-aligned mapping of named tensors.

    ``null`` names the keys that are dropped (set to their null value) in the unconditional counterpart;
    see :meth:`uncond`. Keys not in ``null`` (a source image, an edit mask) are kept by ``uncond``, as
    classifier-free guidance over an edit keeps the source image.
    """

    __slots__ = ("_data", "_nulls")

    def __init__(
        self,
        data: Mapping[str, Tensor] | None = None,
        *,
        nulls: Mapping[str, Tensor] | None = None,
        **tensors: Tensor,
    ) -> None:
        merged: dict[str, Tensor] = dict(data or {})
        merged.update(tensors)
        batch = None
        for name, value in merged.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"Cond[{name!r}] must be a tensor, got {type(value).__name__}")
            if value.dim() == 0:
                raise ValueError(f"Cond[{name!r}] must have a batch dimension, got a scalar")
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise ValueError(
                    f"Cond tensors must share the batch size: {name!r} has {value.shape[0]}, expected {batch}"
                )
        self._data = merged
        self._nulls: dict[str, Tensor] = dict(nulls or {})
        for name in self._nulls:
            if name not in merged:
                raise KeyError(f"null value given for {name!r}, which is not in the Cond")

    # Mapping protocol -------------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Tensor:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self._data.items())
        return f"Cond({parts}; batch={self.batch_size})"

    # Batch operations ------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int | None:
        """The shared first dimension, or ``None`` for an empty Cond."""
        for value in self._data.values():
            return int(value.shape[0])
        return None

    @property
    def nulls(self) -> Mapping[str, Tensor]:
        """Per-key null values (one row each, broadcast over the batch) used by :meth:`uncond`."""
        return dict(self._nulls)

    def _with(self, data: dict[str, Tensor]) -> Cond:
        return Cond(data, nulls=self._nulls)

    def index(self, idx: Any) -> Cond:
        """Select rows: ``cond.index(slice(0, 2))`` or ``cond.index(tensor_of_indices)``.

        An integer (or 0-d tensor) index keeps the batch dimension: ``cond.index(i)`` is a Cond of batch 1.
        """
        if isinstance(idx, int) and not isinstance(idx, bool):
            idx = [idx]
        elif isinstance(idx, Tensor) and idx.dim() == 0:
            idx = idx.reshape(1)
        return self._with({k: v[idx] for k, v in self._data.items()})

    def repeat(self, n: int) -> Cond:
        """Repeat the whole batch ``n`` times: rows ``[c, c, ..., c]`` (like ``torch.cat([c] * n)``)."""
        return self._with({k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in self._data.items()})

    def repeat_interleave(self, n: int) -> Cond:
        """Repeat every row ``n`` times in place: rows ``[c0, c0, c1, c1, ...]``."""
        return self._with({k: v.repeat_interleave(n, dim=0) for k, v in self._data.items()})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cond:
        """Move every tensor to ``device``; cast floating tensors (only) to ``dtype``.

        Like ``Tensor.to``, a dtype may be given alone as the first argument: ``cond.to(torch.float64)``.
        """
        if isinstance(device, torch.dtype):
            if dtype is not None:
                raise TypeError("Cond.to got two dtypes")
            device, dtype = None, device

        def move(value: Tensor) -> Tensor:
            cast = dtype if dtype is not None and value.is_floating_point() else None
            return value.to(device=device, dtype=cast)

        return Cond(
            {k: move(v) for k, v in self._data.items()},
            nulls={k: move(v) for k, v in self._nulls.items()},
        )

    def replace(self, **tensors: Tensor) -> Cond:
        """A copy with some entries added or replaced."""
        data = dict(self._data)
        data.update(tensors)
        return Cond(data, nulls={k: v for k, v in self._nulls.items() if k in data})

    def without(self, *keys: str) -> Cond:
        """A copy without the named entries."""
        data = {k: v for k, v in self._data.items() if k not in keys}
        return Cond(data, nulls={k: v for k, v in self._nulls.items() if k in data})

    def uncond(self) -> Cond:
        """The unconditional counterpart: every key with a null value is replaced by that value, broadcast.

        Keys without a null value (a source image, an edit mask) are kept, so guidance over an edit field
        contrasts the instruction while keeping the source.
        """
        data = dict(self._data)
        for key, null in self._nulls.items():
            ref = data[key]
            data[key] = null.to(device=ref.device, dtype=ref.dtype).expand_as(ref).clone()
        return Cond(data, nulls=self._nulls)

    @staticmethod
    def cat(conds: Iterable[Cond]) -> Cond:
        """Concatenate Conds with the same keys along the batch; null values come from the first."""
        conds = list(conds)
        if not conds:
            raise ValueError("Cond.cat needs at least one Cond")
        keys = list(conds[0].keys())
        for other in conds[1:]:
            if set(other.keys()) != set(keys):
                raise ValueError(
                    f"Cond.cat needs the same keys, got {sorted(keys)} and {sorted(other.keys())}"
                )
        return Cond({k: torch.cat([c[k] for c in conds], dim=0) for k in keys}, nulls=conds[0]._nulls)
