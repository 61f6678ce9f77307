"""``digits.describe_target``: read a local edit's Cond as the T2I prompt of its edited canvas.

The training-free local-edit teacher ``masked(inside: describe_target(guided T2I), outside: toward_source)``
needs the T2I field to draw the edited side from a prompt that describes the whole edited canvas ("a 7 on
the left and a 5 on the right"), with no source canvas. This operator swaps the Cond's ``text``,
``text_mask`` and ``pooled`` for ``target_text``, ``target_text_mask`` and ``target_pooled`` and zeroes
``source`` (what T2I batches carry), then calls its field. Put guidance inside it, so guidance nulls the
described prompt.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fieldkit.plugin_api import Cond, FieldkitError, Operator

KEYS = {"text": "target_text", "text_mask": "target_text_mask", "pooled": "target_pooled"}


class DescribeTarget(Operator):
    """``v = field(x, sigma, cond as the T2I prompt of the edited canvas, source zeroed)``."""

    def as_t2i(self, cond: Cond) -> Cond:
        missing = [k for k in KEYS.values() if k not in cond]
        if missing:
            raise FieldkitError(
                f"digits.describe_target needs cond keys {missing}",
                hint="route it to a digits.local_edit bucket, which describes each edited canvas",
            )
        swapped = {k: cond[v] for k, v in KEYS.items()}
        if "source" in cond:
            swapped["source"] = torch.zeros_like(cond["source"])
        return cond.replace(**swapped)

    def uncond(self, cond: Cond) -> Cond:
        return self.as_t2i(cond).uncond()

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        return self.fields[0](x, sigma, self.as_t2i(cond))
