"""An exponential moving average of the student's trainable weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fieldkit.distill.sharding import full_tensor


class EMA:
    """``theta_ema <- d theta_ema + (1 - d) theta`` over the trainable parameters, after every update."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach(), 1 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}")
        for name, value in state.items():
            self.shadow[name].copy_(value)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model``; sharded (FSDP) averages are gathered whole first, a
        collective every process must join."""
        for name, param in model.named_parameters():
            if name in self.shadow:
                param.copy_(full_tensor(self.shadow[name]))
