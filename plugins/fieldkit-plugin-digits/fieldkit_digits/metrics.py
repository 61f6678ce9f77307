"""The metrics of the digits world (registered as ``digits.t2i`` and ``digits.edit``).

All of them read samples through the stored judge (:mod:`fieldkit_digits.judge`), fitted on train digits only.
Let ``read(x)`` be the classifier's reading of each side of a canvas (0-9 or BLANK) and ``asked`` the
sides the prompt asks for (``cond['digits']``).

T2I (our GenEval), per sample, averaged over samples:

- ``identity``: every asked digit appears on some side of the canvas;
- ``position``: every asked digit is on its asked side, ``read(x)[s] == asked[s]`` for non-blank ``asked[s]``;
- ``count``: the number of non-blank sides read equals the number asked;
- ``accuracy`` (= ``score``): the whole canvas reads as asked, ``read(x) == asked`` on both sides
  (position and count together);
- ``fd``: the Fréchet distance ``|m_g - m_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2))`` between the judge's
  64-d features of the samples and of held-out real canvases with the same layouts (one real canvas per
  sample, held-out digits drawn with a fixed seed);
- ``realism``: the mean log-likelihood per pixel (nats) of the non-blank asked sides under the judge's density
  of real digits (higher is more realistic).

Edits (our GEditBench), per sample, averaged; ``PSNR(a, b) = 10 log10(1 / mean((a' - b')^2))`` on pixels
mapped to [0, 1], capped at 50 dB:

- local edits: ``success`` = the edited side reads as asked (the new digit, or BLANK for remove);
  ``psnr`` = PSNR of the untouched side against the source's (preservation);
- global edits: ``success`` = of the candidates {source, invert, bold, mirror, flip}(source), the sample is
  nearest (MSE) to the asked transform; ``psnr`` = PSNR of the canvas against the exact ground truth;
- ``score = success * clip((psnr - 10) / 20, 0, 1)``: an edit counts fully when it reads as asked and keeps
  what it should to 30 dB or better, and nothing when it fails or keeps nothing (10 dB is about the PSNR
  between two different real digits).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fieldkit.plugin_api import Batch
from fieldkit_digits.judge import Judge, judge
from fieldkit_digits.params import EditMetricParams, T2IMetricParams
from fieldkit_digits.world import (
    BLANK,
    GLOBAL_OPS,
    LOCAL_OPS,
    DigitPool,
    compose,
    global_edit,
    halves,
    side_of,
)

PSNR_CAP = 50.0


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample PSNR (dB) of images in [-1, 1], on pixels mapped to [0, 1]; capped at 50 dB."""
    mse = ((a.float().clamp(-1, 1) - b.float().clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(10 ** (-PSNR_CAP / 10)))).clamp_max(PSNR_CAP)


def edit_score(success: Tensor, quality: Tensor) -> Tensor:
    """``success * clip((psnr - 10) / 20, 0, 1)`` per sample."""
    return success.float() * ((quality - 10) / 20).clamp(0, 1)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature rows ``a`` and ``b``.

    ``tr (S_a S_b)^(1/2)`` is computed as ``sum sqrt(eig(S_a^(1/2) S_b S_a^(1/2)))``, which is exact for
    covariance matrices and stable when they are singular (few samples, dead features).
    """
    a64, b64 = a.double(), b.double()
    cov_a, cov_b = torch.cov(a64.T), torch.cov(b64.T)
    w, v = torch.linalg.eigh(cov_a)
    root_a = (v * w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    mean = (a64.mean(0) - b64.mean(0)).pow(2).sum()
    return float(mean + cov_a.trace() + cov_b.trace() - 2 * cross)


def real_canvases(digits: Tensor, seed: int = 0) -> Tensor:
    """Held-out real canvases with the layouts ``digits`` [B, 2] (drawn with ``seed``)."""
    pool = DigitPool("heldout")
    gen = torch.Generator().manual_seed(seed)
    return compose(pool.draw(digits[:, 0], gen), pool.draw(digits[:, 1], gen))


class T2IMetric:
    """See the module docstring for the formulas."""

    def __init__(self, params: T2IMetricParams, judge_: Judge | None = None) -> None:
        self.params = params
        self.judge = judge_ or judge()

    def __call__(self, samples: Tensor, batch: Batch) -> dict[str, float]:
        samples = samples.float().cpu()
        asked = batch.cond["digits"].cpu().long()
        read = self.judge.read(samples)
        real = asked != BLANK
        exact_side = (read == asked) | ~real
        present = torch.stack([((read == asked[:, [s]]).any(1) | ~real[:, s]) for s in range(2)], dim=1).all(
            1
        )
        count = (read != BLANK).sum(1) == real.sum(1)
        accuracy = (read == asked).all(1)
        feats = self.judge.features(samples)
        ref = self.judge.features(real_canvases(asked, self.params.seed))
        sides = halves(samples)[real.flatten()]
        realism = self.judge.log_likelihood(sides).mean() if len(sides) else torch.tensor(float("nan"))
        return {
            "accuracy": float(accuracy.float().mean()),
            "identity": float(present.float().mean()),
            "position": float(exact_side.all(1).float().mean()),
            "count": float(count.float().mean()),
            "fd": frechet_distance(feats, ref),
            "realism": float(realism),
            "score": float(accuracy.float().mean()),
        }


class EditMetric:
    """See the module docstring for the formulas; local or global is read from the batch's edit codes."""

    def __init__(self, params: EditMetricParams, judge_: Judge | None = None) -> None:
        self.params = params
        self.judge = judge_ or judge()

    def __call__(self, samples: Tensor, batch: Batch) -> dict[str, float]:
        samples = samples.float().cpu()
        cond = batch.cond
        source, ops = cond["source"].float().cpu(), cond["op"].cpu().long()
        local = "target_text" in cond or bool((cond["side"] >= 0).all())
        if local:
            side = cond["side"].cpu().long()
            rows = torch.arange(len(samples))
            edited = torch.stack([side_of(samples[i : i + 1], int(side[i]))[0] for i in rows])
            kept = torch.stack([side_of(samples[i : i + 1], 1 - int(side[i]))[0] for i in rows])
            kept_src = torch.stack([side_of(source[i : i + 1], 1 - int(side[i]))[0] for i in rows])
            asked = cond["digits"].cpu().long()[rows, side]
            success = self.judge.read_sides(edited) == asked
            quality = psnr(kept, kept_src)
            names: tuple[str, ...] = LOCAL_OPS
        else:
            candidates = torch.stack([source, *(global_edit(source, op) for op in GLOBAL_OPS)], 1)
            dist = (candidates - samples[:, None]).pow(2).flatten(2).mean(-1)
            success = dist.argmin(1) == ops + 1
            truth = candidates[torch.arange(len(samples)), ops + 1]
            quality = psnr(samples, truth)
            names = GLOBAL_OPS
        out = {
            "success": float(success.float().mean()),
            "psnr": float(quality.mean()),
            "score": float(edit_score(success, quality).mean()),
        }
        if self.params.per_op:
            for k, name in enumerate(names):
                rows = ops == k
                if rows.any():
                    out[f"success/{name}"] = float(success[rows].float().mean())
        return out
