"""A small closed-form world for the engine's tests (and the multi-process worker): trainable affine and
linear fields a same-shaped student can learn exactly, a marked Gaussian-mixture bucket, and the plugin
that registers them (``affine``, ``linear`` sources; ``marked`` dataset)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fieldkit.analytic import GaussianMixtureData, GaussianMixtureField
from fieldkit.cond import Cond
from fieldkit.data import Batch
from fieldkit.field import ModuleField, broadcast_sigma
from fieldkit.plugins import hookimpl
from fieldkit.plugins.registry import Params


class AffineField(ModuleField):
    """``v = a * x + b * sigma + c * label`` per channel: a same-shaped student can learn it exactly.

    Test hooks (all off by default): ``log`` (a list) gets one entry per call with the field's ``tag``,
    the Cond's ``route`` marker, the state and the sigmas; ``nan_on(call_number)`` returning true makes
    that call return NaN; ``on_call(field)`` runs on every call (e.g. to snapshot the student).
    """

    def __init__(self, channels: int = 1, seed: int = 0, tag: str = "") -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Parameter(torch.randn(channels, generator=g) * 0.5)
        self.b = nn.Parameter(torch.randn(channels, generator=g))
        self.c = nn.Parameter(torch.randn(channels, generator=g) * 0.5)
        self.tag = tag
        self.calls = 0
        self.log: list[dict] | None = None
        self.nan_on = None
        self.on_call = None

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self)
        s = broadcast_sigma(sigma, x)
        label = cond["label"].to(x).view(-1, *([1] * (x.dim() - 1)))

        def per_channel(p: Tensor) -> Tensor:
            return p.view(1, -1, *([1] * (x.dim() - 2)))

        v = per_channel(self.a) * x + per_channel(self.b) * s + per_channel(self.c) * label
        if self.log is not None:
            route = cond["route"].clone() if "route" in cond else None
            entry = {"tag": self.tag, "route": route, "x": x.detach().clone(), "sigma": sigma.clone()}
            self.log.append(entry)
        if self.nan_on is not None and self.nan_on(self.calls):
            v = torch.full_like(v, float("nan"))
        return v


class LinearField(ModuleField):
    """A per-pixel ``nn.Linear`` over ``[x, sigma, label]`` (what LoRA adapts); ``lora_targets = ["lin"]``."""

    lora_targets = ("lin",)

    def __init__(self, channels: int = 1, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(channels + 2, channels)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(self.lin.weight.shape, generator=g) * 0.5)
            self.lin.bias.copy_(torch.randn(self.lin.bias.shape, generator=g) * 0.5)

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        b, _, h, w = x.shape
        s = broadcast_sigma(sigma, x).expand(b, 1, h, w)
        label = cond["label"].to(x).view(-1, 1, 1, 1).expand(b, 1, h, w)
        feats = torch.cat([x, s, label], dim=1).permute(0, 2, 3, 1)
        return self.lin(feats).permute(0, 3, 1, 2)


class MarkedData:
    """A Gaussian-mixture bucket whose Cond carries ``route`` (a per-sample marker) beside ``label``;
    ``targets: false`` makes it a conditions-only bucket."""

    def __init__(self, marker: int, classes: int, shape: tuple[int, ...], seed: int, targets: bool) -> None:
        self.inner = GaussianMixtureData(GaussianMixtureField.random(classes, shape, seed=seed))
        self.shape = self.inner.shape
        self.marker = marker
        self.targets = targets

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        batch = self.inner.sample(batch_size, generator)
        cond = batch.cond.replace(route=torch.full((batch_size,), self.marker))
        return Batch(cond, batch.target if self.targets else None)


class AffineParams(Params):
    channels: int = 1
    seed: int = 0
    tag: str = ""


class LinearParams(Params):
    channels: int = 1
    seed: int = 0


class MarkedParams(Params):
    marker: int
    classes: int = 3
    shape: tuple[int, ...] = (1, 4, 4)
    seed: int = 0
    targets: bool = True


class DistillWorld:
    """Registers ``affine`` and ``linear`` sources and the ``marked`` dataset."""

    @hookimpl
    def fieldkit_register_sources(self, register) -> None:
        register("affine", lambda p, ctx: AffineField(p.channels, p.seed, p.tag), AffineParams)
        register("linear", lambda p, ctx: LinearField(p.channels, p.seed), LinearParams)

    @hookimpl
    def fieldkit_register_datasets(self, register) -> None:
        register(
            "marked",
            lambda p, ctx: MarkedData(p.marker, p.classes, tuple(p.shape), p.seed, p.targets),
            MarkedParams,
        )
