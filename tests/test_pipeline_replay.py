"""fieldkit.testing.assert_follows_pipeline: a field that hands a bfloat16 transformer the pipeline's inputs
passes the replay of the pipeline's calls, one whose timestep is rounded elsewhere fails it."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from fieldkit.cond import Cond
from fieldkit.testing import assert_follows_pipeline, recorded_calls

#: A grid where rounding the timestep as sigma (0.5312) and as 1000 sigma (0.5273) differ at 0.53.
SIGMAS = torch.tensor([1.0, 0.53, 0.0])


class Transformer(nn.Module):
    """``x t + text`` in bfloat16: every bfloat16 rounding of ``t`` shows in the output."""

    def forward(self, *, hidden_states: Tensor, timestep: Tensor, text: Tensor) -> tuple[Tensor]:
        return (hidden_states * timestep[:, None] + text,)


def pipeline(transformer: Transformer, x: Tensor, text: Tensor) -> None:
    """A pipeline's Euler loop: the timestep as ``(1000 sigma)`` in bfloat16 over 1000, one call a step."""
    for sigma, nxt in itertools.pairwise(SIGMAS):
        t = (1000 * sigma).expand(x.shape[0]).to(torch.bfloat16) / 1000
        v = transformer(hidden_states=x.to(torch.bfloat16), timestep=t, text=text.to(torch.bfloat16))[0]
        x = x + (nxt - sigma) * v.float()


def field(transformer: Transformer, slip: bool) -> Callable[[Tensor, Tensor, Cond], Tensor]:
    """The field over ``transformer``: its timestep rounded as the pipeline's, or (``slip``) as ``sigma``."""

    def velocity(x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        t = sigma.to(torch.bfloat16) if slip else (1000 * sigma).to(torch.bfloat16) / 1000
        out: Tensor = transformer(
            hidden_states=x.to(torch.bfloat16), timestep=t, text=cond["text"].bfloat16()
        )[0]
        return out.float()

    return velocity


@pytest.mark.parametrize("slip", [False, True])
def test_a_timestep_rounded_elsewhere_fails_the_replay(slip: bool) -> None:
    transformer, x = Transformer(), torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    cond = Cond(text=torch.full((2, 8), 0.1))
    with recorded_calls(transformer) as calls:
        pipeline(transformer, x, cond["text"])
    assert len(calls) == 2
    if slip:
        with pytest.raises(AssertionError, match="step 1, call 0: fieldkit's velocity differs"):
            assert_follows_pipeline(field(transformer, slip), calls, SIGMAS, [cond])
    else:
        assert_follows_pipeline(field(transformer, slip), calls, SIGMAS, [cond])


def test_the_calls_must_be_the_steps_times_the_conds() -> None:
    transformer, x = Transformer(), torch.zeros(1, 8)
    cond = Cond(text=torch.zeros(1, 8))
    with recorded_calls(transformer) as calls:
        pipeline(transformer, x, cond["text"])
    with pytest.raises(AssertionError, match="2 transformer calls, not 2 x 2"):
        assert_follows_pipeline(field(transformer, False), calls, SIGMAS, [cond, cond])
    transformer(hidden_states=x, timestep=torch.zeros(1), text=x)  # after the block: not recorded
    assert len(calls) == 2
