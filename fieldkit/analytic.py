"""Closed-form velocity fields: exact teachers for tests, examples and benchmarks of the engine.

For data ``x0 ~ N(m, s^2 I)`` the state ``x_sigma`` is ``N((1 - sigma) m, tau^2 I)`` with
``tau^2 = (1 - sigma)^2 s^2 + sigma^2``, and the exact flow-matching velocity ``E[eps - x0 | x_sigma]`` is
``v = (sigma - (1 - sigma) s^2) / tau^2 * (x - (1 - sigma) m) - m``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fieldkit.cond import Cond
from fieldkit.data import Batch
from fieldkit.field import ModuleField, broadcast_sigma


def gaussian_velocity(x: Tensor, sigma: Tensor, mean: Tensor, std: float) -> Tensor:
    """``(sigma - (1 - sigma) s^2) / tau^2 * (x - (1 - sigma) m) - m`` for data ``N(m, s^2 I)``."""
    s = broadcast_sigma(sigma, x)
    tau2 = (1 - s) ** 2 * std**2 + s**2
    return (s - (1 - s) * std**2) / tau2 * (x - (1 - s) * mean) - mean


class GaussianMixtureField(ModuleField):
    """The exact velocity of a mixture of isotropic Gaussians, one component per class label.

    With ``cond["label"]`` (integer ``[B]``) the field is that component's velocity; rows whose label is
    ``-1`` (the null label, see :meth:`uncond`) get the mixture's velocity
    ``sum_k p(k | x_sigma) v_k``, so classifier-free guidance over it is meaningful.
    """

    means: Tensor  # [K, *shape], a buffer

    def __init__(self, means: Tensor, std: float = 0.1) -> None:
        super().__init__()
        if means.dim() < 2:
            raise ValueError("means must be [K, *shape]: one mean per class")
        self.register_buffer("means", means.clone())
        self.std = float(std)

    @classmethod
    def random(
        cls, classes: int, shape: tuple[int, ...], std: float = 0.1, seed: int = 0
    ) -> GaussianMixtureField:
        """Component means drawn from ``N(0, I)`` with a fixed seed."""
        gen = torch.Generator().manual_seed(seed)
        return cls(torch.randn((classes, *shape), generator=gen), std=std)

    def uncond(self, cond: Cond) -> Cond:
        """The null label ``-1`` for every row."""
        return cond.replace(label=torch.full_like(cond["label"], -1))

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        means = self.means.to(x.dtype)
        per_class = torch.stack([gaussian_velocity(x, sigma, m, self.std) for m in means], dim=1)
        label = cond["label"].to(x.device).long() if "label" in cond else torch.full_like(sigma, -1).long()
        s = broadcast_sigma(sigma, x).unsqueeze(1)
        tau2 = (1 - s) ** 2 * self.std**2 + s**2
        centred = x.unsqueeze(1) - (1 - s) * means.unsqueeze(0)
        log_p = -(centred**2 / (2 * tau2)).flatten(2).sum(-1)
        posterior = torch.softmax(log_p, dim=1)
        onehot = torch.nn.functional.one_hot(label.clamp_min(0), means.shape[0]).to(x.dtype)
        weights = torch.where((label >= 0).unsqueeze(1), onehot, posterior)
        return torch.einsum("bk,bk...->b...", weights, per_class)


class GaussianMixtureData:
    """The data bucket matching :class:`GaussianMixtureField`: labels, and exact samples ``m_k + s z``."""

    def __init__(self, field: GaussianMixtureField, null_label: bool = True) -> None:
        self.field = field
        self.shape = tuple(field.means.shape[1:])
        self.null_label = null_label

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Uniform labels; targets drawn from the labelled component."""
        classes = self.field.means.shape[0]
        label = torch.randint(classes, (batch_size,), generator=generator)
        noise = torch.randn((batch_size, *self.shape), generator=generator)
        target = self.field.means[label] + self.field.std * noise
        nulls = {"label": torch.tensor([-1])} if self.null_label else None
        return Batch(Cond({"label": label}, nulls=nulls), target)

    def captions(self, batch: Batch) -> list[str]:
        """``component K`` for each sample's label (sample grids show them)."""
        return [f"component {int(k)}" for k in batch.cond["label"]]


class MixtureAccuracy:
    """Prompt-following on the mixture: ``accuracy = mean[argmin_k |x - m_k| == label]`` (also reported as
    ``score``, the number results tables compare fields by) and ``spread``, the mean distance to the asked
    component in units of its std, ``mean |x - m_label| / (s sqrt(D))``: about 1 for a true sample of the
    component, below 1 for samples collapsed toward its mean, above 1 for samples off it."""

    def __init__(self, field: GaussianMixtureField) -> None:
        self.field = field

    def __call__(self, samples: Tensor, batch: Batch) -> dict[str, float]:
        means = self.field.means.to(samples)
        label = batch.cond["label"].long()
        distances = (samples.unsqueeze(1) - means.unsqueeze(0)).flatten(2).norm(dim=-1)
        finite = torch.isfinite(samples).flatten(1).all(1)  # argmin would pick a class for a NaN sample
        accuracy = ((distances.argmin(1) == label) & finite).float().mean()
        dims = samples[0].numel()
        spread = distances.gather(1, label.unsqueeze(1)).mean() / (self.field.std * dims**0.5)
        return {"accuracy": float(accuracy), "spread": float(spread), "score": float(accuracy)}
