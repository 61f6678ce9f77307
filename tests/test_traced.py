"""fieldkit.backbones.traced on small modules: a replay is used only where it equals the eager pass, keeps
the random stream of the eager passes, and is keyed by the non-tensor arguments."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import Tensor, nn

from fieldkit.backbones import traced


class Counting(nn.Module):
    """Its output depends on Python state a recording cannot see: a replay would freeze the count."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.lin = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.lin(x) * self.calls


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: Tensor, scale: int = 1, options: object = None) -> Tensor:
        return self.drop(self.lin(x)) * scale


def test_a_replay_that_differs_from_the_eager_pass_is_not_used() -> None:
    model, x = Counting(), torch.randn(2, 3)
    with torch.no_grad(), traced.replayed_passes():
        with pytest.warns(RuntimeWarning, match="Counting's pass with these inputs runs eager: its replay"):
            first = traced.call(model, x=x)
        second = traced.call(model, x=x)
    assert list(traced._REPLAYS[model].values()) == [None]
    with torch.no_grad():
        base = model.lin(x)
    # recording ran the Python once (count 1, frozen in), the check's eager pass gave the caller count 2, and
    # the next call, eager, count 3
    assert model.calls == 3 and torch.equal(first, base * 2) and torch.equal(second, base * 3)


def test_replays_keep_the_random_stream_of_the_eager_passes() -> None:
    model, x = Scaled().train(), torch.randn(4, 3)

    def outputs(replayed: bool) -> tuple[list[Tensor], Tensor]:
        torch.manual_seed(7)
        with torch.no_grad(), traced.replayed_passes(enabled=replayed):
            outs = [traced.call(model, x=x) for _ in range(4)]
        return outs, torch.get_rng_state()

    eager, eager_state = outputs(False)
    replayed, replayed_state = outputs(True)
    assert [r is not None for r in traced._REPLAYS[model].values()] == [True]
    assert all(torch.equal(a, b) for a, b in zip(eager, replayed, strict=True))
    assert torch.equal(eager_state, replayed_state)
    assert not torch.equal(eager[0], eager[1])  # dropout did draw


def test_non_tensor_arguments_key_their_own_recordings() -> None:
    model, x = Scaled().eval(), torch.randn(2, 3)
    with torch.no_grad():
        expected = {scale: model(x, scale) for scale in (1, 2)}
        with traced.replayed_passes():
            for scale in (1, 2, 1, 2):
                assert torch.equal(traced.call(model, x=x, scale=scale), expected[scale])
            assert torch.equal(traced.call(model, x=x, options={"a": 1}), expected[1])  # unhashable: eager
    assert len(traced._REPLAYS[model]) == 2


def test_a_new_input_shape_is_a_new_recording_and_tensor_subclasses_are_refused() -> None:
    model = Scaled().eval()
    with torch.no_grad(), traced.replayed_passes():
        for rows in (1, 2, 1):
            x = torch.randn(rows, 3)
            assert torch.equal(traced.call(model, x=x), model(x))
    assert len(traced._REPLAYS[model]) == 2
    weird = Scaled()
    weird.lin.weight = nn.Parameter(torch.randn(3, 3).to(torch.float64))
    assert traced.walk(weird).refusal is None  # a dtype is no reason; a device or a tensor subclass is
    weird.register_buffer("meta", torch.empty(2, device="meta"))
    assert traced.walk(weird).refusal == "module (root) holds meta, which is not a plain CPU tensor"


def test_recordings_die_with_their_model() -> None:
    """A model made per call (an inference copy for each sample grid) is not kept alive by its recordings."""
    model = Scaled().eval()
    with torch.no_grad(), traced.replayed_passes():
        traced.call(model, x=torch.randn(2, 3))
    assert [r is not None for r in traced._REPLAYS[model].values()] == [True]
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None  # and with it its entry of the recordings (a weak key)


@pytest.mark.parametrize("optimise", [True, False])
def test_replays_run_torchscripts_plain_plan_and_leave_the_callers_flag_as_it_was(optimise: bool) -> None:
    """Replays turn TorchScript's optimising passes off for themselves only (the flag is the caller's
    again after each call), and equal the eager pass whatever the caller set."""
    model, x = Scaled().eval(), torch.randn(2, 3)
    with torch.no_grad():
        eager = model(x)
        with torch.jit.optimized_execution(optimise), traced.replayed_passes():  # type: ignore[attr-defined]
            outs = [traced.call(model, x=x) for _ in range(3)]
            assert torch._C._get_graph_executor_optimize() is optimise
    assert all(torch.equal(out, eager) for out in outs)
    assert [r is not None for r in traced._REPLAYS[model].values()] == [True]
