"""The judge behind the metrics: a digit classifier and a density model of real digits, both fitted on
train digits only and stored as safetensors (``assets/judge.safetensors``), so every metric is deterministic.

- ``Classifier``: a small CNN that reads one 8 x 8 side as a digit 0-9 or ``BLANK`` (10). Its penultimate
  layer (32 features per side, 64 per canvas) is the feature space of the Fréchet distance.
- ``Density``: a 10-component full-covariance Gaussian mixture (scikit-learn, ``reg_covar`` 0.05) over the
  64 pixels of real non-blank sides; its mean log-likelihood per pixel is the realism reward.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fieldkit.plugin_api import atomic_path
from fieldkit_digits.world import BLANK, DigitPool, halves

ASSET = Path(__file__).parent / "assets" / "judge.safetensors"


class Classifier(nn.Module):
    """``[N, 1, 8, 8]`` sides -> logits over 0-9 and BLANK; ``features`` gives the 32-d penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 11)

    def features(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x.clamp(-1, 1)))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.fc2(self.features(x))
        return logits


class Density(nn.Module):
    """A Gaussian mixture over flattened sides: ``log p(x) = logsumexp_k [log w_k + log N(x; m_k, S_k)]``."""

    log_weights: Tensor
    means: Tensor
    prec_chol: Tensor

    def __init__(self, weights: Tensor, means: Tensor, prec_chol: Tensor) -> None:
        super().__init__()
        self.register_buffer("log_weights", weights.log())
        self.register_buffer("means", means)
        self.register_buffer("prec_chol", prec_chol)

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density of each row of ``x`` ``[N, D]`` (pixels clamped to [-1, 1])."""
        x = x.clamp(-1, 1).double()
        y = torch.einsum("nd,kde->nke", x, self.prec_chol.double()) - torch.einsum(
            "kd,kde->ke", self.means.double(), self.prec_chol.double()
        )
        log_det = self.prec_chol.double().diagonal(dim1=1, dim2=2).log().sum(-1)
        d = x.shape[1]
        log_n = -0.5 * y.pow(2).sum(-1) + log_det - 0.5 * d * math.log(2 * math.pi)
        return torch.logsumexp(log_n + self.log_weights.double(), dim=1).float()


def _training_sides(pool: DigitPool, gen: torch.Generator, blanks: int) -> tuple[Tensor, Tensor]:
    images = torch.cat([pool.images, torch.full((blanks, 8, 8), -1.0)]).unsqueeze(1)
    labels = torch.cat([pool.labels, torch.full((blanks,), BLANK)])
    return images, labels


def fit(seed: int = 0, epochs: int = 40) -> dict[str, Tensor]:
    """Fit the classifier and the density on train digits (seeded); returns the tensors to store."""
    from sklearn.mixture import GaussianMixture

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train = DigitPool("train")
    images, labels = _training_sides(train, gen, blanks=len(train.labels) // 10)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    n = len(labels)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, 64):
            idx = perm[i : i + 64]
            x = images[idx]
            # Robust to what generators make: pixel noise and one-pixel shifts.
            x = x + torch.rand(len(idx), 1, 1, 1, generator=gen) * 0.25 * torch.randn(x.shape, generator=gen)
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
            x = torch.roll(x, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            opt.step()
    gmm = GaussianMixture(10, covariance_type="full", reg_covar=0.05, random_state=seed, max_iter=200)
    gmm.fit(train.images.flatten(1).double().numpy())
    state = {f"classifier.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    state["density.weights"] = torch.tensor(gmm.weights_, dtype=torch.float64)
    state["density.means"] = torch.tensor(gmm.means_, dtype=torch.float64)
    state["density.prec_chol"] = torch.tensor(gmm.precisions_cholesky_, dtype=torch.float64)
    return state


def build(path: Path = ASSET, seed: int = 0) -> Path:
    """Fit and write the judge to ``path`` (safetensors)."""
    from safetensors.torch import save_file

    state = fit(seed)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"seed": str(seed)})
    return path


class Judge:
    """The stored classifier and density, with the readings the metrics need."""

    def __init__(self, path: Path = ASSET) -> None:
        from safetensors.torch import load_file

        if not path.is_file():
            build(path)
        state = load_file(str(path))
        self.classifier = Classifier()
        self.classifier.load_state_dict(
            {k.removeprefix("classifier."): v for k, v in state.items() if k.startswith("classifier.")}
        )
        self.classifier.eval().requires_grad_(False)
        self.density = Density(state["density.weights"], state["density.means"], state["density.prec_chol"])

    @torch.no_grad()
    def read(self, canvas: Tensor) -> Tensor:
        """The class (0-9, BLANK) of each side of canvases ``[B, 1, 8, 16]``: ``[B, 2]``."""
        logits: Tensor = self.classifier(halves(canvas.float().cpu()))
        return logits.argmax(-1).reshape(-1, 2)

    @torch.no_grad()
    def read_sides(self, sides: Tensor) -> Tensor:
        """The class of each side ``[N, 1, 8, 8]``: ``[N]``."""
        logits: Tensor = self.classifier(sides.float().cpu())
        return logits.argmax(-1)

    @torch.no_grad()
    def features(self, canvas: Tensor) -> Tensor:
        """The classifier's features of both sides, concatenated: ``[B, 64]``."""
        return self.classifier.features(halves(canvas.float().cpu())).reshape(canvas.shape[0], -1)

    @torch.no_grad()
    def log_likelihood(self, sides: Tensor) -> Tensor:
        """Mean log-likelihood per pixel (nats) of sides ``[N, 1, 8, 8]`` under the density: ``[N]``."""
        return self.density.log_prob(sides.float().cpu().flatten(1)) / 64.0

    @torch.no_grad()
    def heldout_accuracy(self) -> float:
        """The classifier's accuracy on held-out real digits (and as many blank sides)."""
        held = DigitPool("heldout")
        images = torch.cat([held.images, torch.full((20, 8, 8), -1.0)]).unsqueeze(1)
        labels = torch.cat([held.labels, torch.full((20,), BLANK)])
        return float((self.read_sides(images) == labels).float().mean())


@lru_cache(maxsize=1)
def judge() -> Judge:
    """The process-wide judge (read once)."""
    return Judge()
