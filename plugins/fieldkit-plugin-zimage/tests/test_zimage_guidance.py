"""``zimage.guidance`` in closed form: the pipelines' CFG, its norm cap and its truncation, per sample."""

from __future__ import annotations

import torch
from fieldkit_zimage.guidance import ZImageGuidance

from fieldkit import Cond
from fieldkit.field import FunctionField

X = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))


def toy(x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
    """``v = c x``: the label ``c`` is 2 for the prompt and -1 for the negative prompt (its null)."""
    return cond["label"].reshape(-1, 1, 1, 1) * x


COND = Cond(label=torch.full((3,), 2.0), nulls={"label": torch.tensor([-1.0])})


def test_cfg_is_the_pipelines_formula_and_scale_zero_is_the_plain_field() -> None:
    sigma = torch.tensor([0.9, 0.5, 0.1])
    v_c, v_u = 2 * X, -X
    got = ZImageGuidance(FunctionField(toy), 3.0)(X, sigma, COND)
    torch.testing.assert_close(got, v_c + 3.0 * (v_c - v_u))
    torch.testing.assert_close(ZImageGuidance(FunctionField(toy), 0.0)(X, sigma, COND), v_c)


def test_normalization_caps_each_sample_at_c_times_the_conditional_norm() -> None:
    sigma = torch.tensor([0.9, 0.5, 0.1])
    got = ZImageGuidance(FunctionField(toy), 3.0, normalization=1.5)(X, sigma, COND)
    norms = got.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, 1.5 * (2 * X).flatten(1).norm(dim=1))
    loose = ZImageGuidance(FunctionField(toy), 3.0, normalization=100.0)(X, sigma, COND)
    torch.testing.assert_close(loose, 2 * X + 3.0 * 3 * X)  # under the cap: untouched


def test_truncation_turns_guidance_off_where_one_minus_sigma_exceeds_tau() -> None:
    sigma = torch.tensor([0.9, 0.5, 0.1])  # 1 - sigma = 0.1, 0.5, 0.9
    got = ZImageGuidance(FunctionField(toy), 3.0, truncation=0.6)(X, sigma, COND)
    torch.testing.assert_close(got[:2], 2 * X[:2] + 9 * X[:2])
    torch.testing.assert_close(got[2], 2 * X[2])
