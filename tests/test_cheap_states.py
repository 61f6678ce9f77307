"""Cheaper on-policy states, each recomputed independently: a replay buffer of kept rollouts with a staleness
bound (``buffer``, ``staleness``), partial rollouts from forward-noised data (``start_sigma``,
``start_from``), and the off-to-on curriculum (``on_policy``, ``handover``); their refusals; and that the
defaults draw exactly what they drew before."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli_run import DISTILL
from test_distill_engine import engine
from test_distill_methods import SHAPE, Recorder, gather, gen, setup
from test_distill_queries import exact_index_probs, gof_pvalue

from fieldkit import loads_graph
from fieldkit.analytic import GaussianMixtureField
from fieldkit.cond import Cond
from fieldkit.data import Batch, Shard
from fieldkit.distill.methods import DistillMethod
from fieldkit.distill.queries import sample_indices
from fieldkit.errors import FieldkitError, GraphError
from fieldkit.flow import euler_sample, interpolate, sigma_schedule
from fieldkit.graph.json_schema import graph_schema
from fieldkit.plugins import get_host
from fieldkit.protocols import LossInputs
from fieldkit.training_params import DenseParams, DistillParams

FAST = settings(max_examples=20, deadline=None)
STUDENT = GaussianMixtureField.random(3, SHAPE, seed=7)


def inputs(target, batch, sigmas, generator, *, step=0, policy=STUDENT) -> LossInputs:
    """One micro-batch's inputs: ``policy`` rolls out, the (uncounted) student takes the loss forward."""
    return LossInputs(STUDENT, policy, target, batch, SHAPE, sigmas, generator, Shard(), step)


# -- the defaults draw what they drew before --------------------------------------------------------------


@pytest.mark.parametrize("params", [DistillParams(), DistillParams(states="data"), DistillParams(reuse=2)])
def test_defaults_draw_indices_then_noise_and_nothing_else(params):
    """No option at its default draws a random number: the stream after one update is exactly the indices
    then the noise (so every committed run reruns to the bit)."""
    teacher, batch, sigmas = setup()
    g = gen(3)
    DistillMethod(params).loss(inputs(teacher, batch, sigmas, g))
    reference = gen(3)
    idx = sample_indices(sigmas.numel() - 1, 6, params.k, params.query, reference)
    torch.randn((6, idx.shape[1] if params.states == "data" else 1, *SHAPE), generator=reference)
    assert torch.equal(g.get_state(), reference.get_state())


# -- replay buffer and staleness --------------------------------------------------------------------------


@FAST
@given(
    buffer=st.integers(1, 4),
    reuse=st.integers(1, 3),
    slack=st.one_of(st.none(), st.integers(0, 3)),
    k=st.integers(1, 2),
)
def test_buffer_draws_each_row_from_a_kept_rollout_no_older_than_staleness(counting, buffer, reuse, slack, k):
    """Every update's state rows and conditions are those of a kept rollout drawn uniformly (reproduced
    draw for draw), the rollouts are fresh exactly every ``reuse`` updates, at most ``buffer`` are kept and
    none is older than ``staleness``."""
    if buffer == 1 and reuse == 1:
        buffer = 2  # keeps rollouts (buffer 1, reuse 1 is the early-stopped default)
    staleness = None if slack is None else reuse - 1 + slack
    params = DistillParams(k=k, reuse=reuse, buffer=buffer, staleness=staleness)
    teacher = setup()[0]
    sigmas = sigma_schedule(4, 3.0)
    steps, n = 4, 4
    policy, target = counting(STUDENT), Recorder(teacher)
    method = DistillMethod(params)
    kept: deque[tuple[int, torch.Tensor, Cond]] = deque(maxlen=buffer)  # (step, states [N, B, ...], cond)
    for update in range(8):
        batch = setup(batch=n, seed=update)[1]  # every update its own batch: conditions tell rollouts apart
        calls = policy.calls
        out = method.loss(inputs(target, batch, sigmas, gen(update), step=update, policy=policy))
        g = gen(update)
        idx = sample_indices(steps, n, k, "low", g)
        noise = torch.randn((n, 1, *SHAPE), generator=g)
        while kept and staleness is not None and update - kept[0][0] > staleness:
            kept.popleft()
        fresh = update % reuse == 0
        assert (out.rollout_nfe, policy.calls - calls) == ((steps - 1, steps - 1) if fresh else (0, 0))
        if fresh:
            full = euler_sample(STUDENT, noise[:, 0], batch.cond, sigmas, record=True)
            kept.append((update, full.states, batch.cond))
        pick = (
            torch.randint(len(kept), (n,), generator=g) if len(kept) > 1 else torch.zeros(n, dtype=torch.long)
        )
        states = torch.stack([kept[int(j)][1][:, b] for b, j in enumerate(pick)], dim=1)
        torch.testing.assert_close(target.xs[-1], gather(states, idx))
        labels = torch.stack([kept[int(j)][2]["label"][b] for b, j in enumerate(pick)])
        assert torch.equal(target.conds[-1]["label"], labels.repeat_interleave(k))
        replay = method.replays[id(target)]
        assert len(replay.rollouts) <= buffer
        assert [r.step for r in replay.rollouts] == [s for s, _, _ in kept]
        assert staleness is None or all(update - r.step <= staleness for r in replay.rollouts)


@pytest.mark.parametrize(
    "params",
    [
        DistillParams(buffer=3, k=2),
        DistillParams(reuse=2, buffer=2, start_sigma=0.6),
        DistillParams(on_policy=0.5),
    ],
)
def test_two_processes_compute_what_one_does(params):
    """Every process draws the buffer's rollouts, the curriculum's coin and the indices for the global
    batch and keeps its rows: two shards' query states, side by side, are one process's."""
    teacher, _, sigmas = setup()
    batches = [setup(seed=s)[1] for s in range(4)]

    def states(shard: Shard) -> list[torch.Tensor]:
        target, method = Recorder(teacher), DistillMethod(params)
        for step, batch in enumerate(batches):
            method.loss(LossInputs(STUDENT, STUDENT, target, batch, SHAPE, sigmas, gen(step), shard, step))
        return target.xs

    one = states(Shard())
    two = zip(states(Shard(0, 2)), states(Shard(1, 2)), strict=True)
    for whole, (first, second) in zip(one, two, strict=True):
        torch.testing.assert_close(torch.cat([first, second]), whole)


def test_a_route_back_after_its_rollouts_went_stale_rolls_out_afresh(counting):
    """``staleness`` counts optimizer updates, also those other routes took: a route whose kept rollouts
    are all too old rolls out before its ``reuse`` updates are used up."""
    teacher, batch, sigmas = setup()
    policy = counting(STUDENT)
    method = DistillMethod(DistillParams(reuse=4, buffer=2, staleness=3))
    nfes = [
        method.loss(inputs(teacher, batch, sigmas, gen(s), step=s, policy=policy)).rollout_nfe
        for s in [0, 1, 9, 10]
    ]
    steps = sigmas.numel() - 1
    assert nfes == [steps - 1, 0, steps - 1, 0]
    assert [r.step for r in method.replays[id(teacher)].rollouts] == [9]


# -- partial rollouts -------------------------------------------------------------------------------------


def partial_draws(steps: int, n: int, k: int, bias: str, first: int, seed: int):
    g = gen(seed)
    idx = sample_indices(steps, n, k, bias, g, start=first)
    return idx, torch.randn((n, 1, *SHAPE), generator=g)[:, 0]


@pytest.mark.parametrize(
    ("start_sigma", "bias", "k"), [(0.6, "low", 1), (0.9, "uniform", 3), (0.35, "mid", 2)]
)
def test_a_partial_rollout_starts_from_noised_data_and_simulates_only_its_last_steps(
    counting, start_sigma, bias, k
):
    teacher, batch, sigmas = setup(steps=8)
    steps, n = 8, 6
    first = int((sigmas > start_sigma).sum())  # the first index with sigma <= start_sigma
    assert sigmas[first] <= start_sigma < sigmas[first - 1] and first > 0
    rolled = Recorder(STUDENT)
    policy, target = counting(rolled), Recorder(teacher)
    params = DistillParams(start_sigma=start_sigma, query=bias, k=k)
    out = DistillMethod(params).loss(inputs(target, batch, sigmas, gen(1), policy=policy))
    idx, eps = partial_draws(steps, n, k, bias, first, 1)
    start = interpolate(batch.target, eps, sigmas[first].expand(n))
    # The first forward sees the start state at sigma_i0 (rows sorted by their last index, longest first).
    # (No forward at all when every query sits at i0: the states are the start states themselves.)
    order = torch.argsort(idx.max(dim=1).values, descending=True, stable=True)
    for x, sigma in zip(rolled.xs[:1], rolled.sigmas[:1], strict=True):
        torch.testing.assert_close(x, start[order][: len(x)])
        torch.testing.assert_close(sigma, sigmas[first].expand(len(x)))
    full = euler_sample(STUDENT, start, batch.cond, sigmas[first:], record=True)
    torch.testing.assert_close(target.xs[0], gather(full.states, idx - first))
    assert int(idx.min()) >= first and bool((out.query_sigmas <= start_sigma).all())
    row_last = idx.max(dim=1).values
    assert out.rollout_nfe == policy.calls == int(row_last.max()) - first
    assert out.rollout_samples == sum(policy.batch_sizes) == int((row_last - first).sum())


def test_a_partial_rollout_of_edits_starts_from_the_noised_source(counting):
    teacher, batch, sigmas = setup()
    source = torch.randn((6, *SHAPE), generator=gen(9))
    edits = Batch(Cond(label=batch.cond["label"], source=source), None)
    target = Recorder(teacher)
    params = DistillParams(start_sigma=0.5, start_from="source", query="all")
    out = DistillMethod(params).loss(inputs(target, edits, sigmas, gen(2)))
    first = int((sigmas > 0.5).sum())
    _, eps = partial_draws(8, 6, 1, "all", first, 2)
    full = euler_sample(
        STUDENT, interpolate(source, eps, sigmas[first].expand(6)), edits.cond, sigmas[first:], record=True
    )
    torch.testing.assert_close(target.xs[0], full.states.transpose(0, 1).flatten(0, 1))
    torch.testing.assert_close(out.query_sigmas, sigmas[first:-1].repeat(6))


def test_partial_rollouts_compose_with_reuse_and_dense_weights(counting):
    """A kept rollout runs from i0 to the last pre-step state (N - 1 - i0 forwards per row); dense queries
    take every index from i0 on, weighted by ``dt^2 / 2`` over the whole schedule."""
    teacher, batch, sigmas = setup()
    policy = counting(STUDENT)
    first = int((sigmas > 0.5).sum())
    method = DistillMethod(DenseParams(start_sigma=0.5, reuse=2))
    outs = [method.loss(inputs(teacher, batch, sigmas, gen(s), step=s, policy=policy)) for s in range(3)]
    assert [o.rollout_nfe for o in outs] == [7 - first, 0, 7 - first]
    assert outs[0].rollout_samples == 6 * (7 - first) and policy.calls == 2 * (7 - first)
    dt2 = (sigmas[:-1] - sigmas[1:]).pow(2) / 2
    weights = method.weights(sigmas, torch.arange(first, 8).expand(6, 8 - first))
    torch.testing.assert_close(weights, (dt2 / dt2.mean())[first:].repeat(6))


@pytest.mark.parametrize("bias", ["low", "high", "uniform", "stratified"])
def test_query_indices_from_a_start_follow_the_bias_conditioned_on_reaching_it(bias):
    steps, first = 12, 5
    idx = sample_indices(steps, 20_000, 2, bias, gen(4), start=first)
    assert int(idx.min()) >= first and int(idx.max()) <= steps - 1
    if bias in ("low", "high"):
        probs = exact_index_probs(steps, *((5, 2) if bias == "low" else (2, 5)))[first:]
    else:
        probs = np.full(steps - first, 1 / (steps - first))
    assert gof_pvalue(idx - first, probs / probs.sum()) > 1e-3
    assert torch.equal(
        sample_indices(steps, 3, 2, "all", gen(0), start=first), torch.arange(first, steps).expand(3, 7)
    )
    with pytest.raises(ValueError, match="start must lie in"):
        sample_indices(steps, 3, 2, bias, gen(0), start=steps)


def test_partial_rollouts_refuse_routes_they_cannot_start():
    teacher, batch, sigmas = setup()
    conditions_only = Batch(batch.cond, None)
    cases = [
        (
            DistillParams(start_sigma=0.5),
            conditions_only,
            sigmas,
            "partial rollouts .* needs clean target images",
        ),
        (DistillParams(start_sigma=0.5, start_from="source"), batch, sigmas, "conditions have no 'source'"),
        (DistillParams(start_sigma=0.01), batch, sigmas, "below every pre-step sigma of this route's 8-step"),
    ]
    for params, data, schedule, message in cases:
        with pytest.raises(FieldkitError, match=message):
            DistillMethod(params).loss(inputs(teacher, data, schedule, gen(0)))


# -- the off-to-on curriculum -----------------------------------------------------------------------------


def test_the_on_policy_fraction_rises_linearly_over_the_handover():
    method = DistillMethod(DistillParams(on_policy=0.8, handover=10))
    assert [method.on_policy_fraction(s) for s in (0, 5, 10, 30)] == pytest.approx([0, 0.4, 0.8, 0.8])
    assert DistillMethod(DistillParams(on_policy=0.3)).on_policy_fraction(0) == 0.3


def test_each_update_takes_rollout_or_data_states_by_one_shared_draw(counting):
    """One generator across updates, as the engine's: update ``s`` is on-policy iff its first draw
    ``u < lambda(s)``; the micro-batches of one update share it, and data states cost no rollout."""
    teacher, batch, sigmas = setup()
    policy, target = counting(STUDENT), Recorder(teacher)
    method = DistillMethod(DistillParams(on_policy=0.75, handover=12, k=2))
    g, reference = gen(11), gen(11)
    decisions = []
    for step in range(40):
        for _ in range(2):  # two micro-batches
            calls = policy.calls
            out = method.loss(inputs(target, batch, sigmas, g, step=step, policy=policy))
            if _ == 0:
                on = float(
                    torch.rand((), generator=reference, dtype=torch.float64)
                ) < method.on_policy_fraction(step)
                decisions.append(on)
            idx = sample_indices(8, 6, 2, "low", reference)
            noise = torch.randn((6, 1 if on else 2, *SHAPE), generator=reference)
            if on:
                full = euler_sample(STUDENT, noise[:, 0], batch.cond, sigmas, record=True)
                torch.testing.assert_close(target.xs[-1], gather(full.states, idx))
                assert policy.calls - calls == out.rollout_nfe == int(idx.max())
            else:
                x0 = batch.target.repeat_interleave(2, 0)
                expected = interpolate(x0, noise.flatten(0, 1), (sigmas[idx]).flatten())
                torch.testing.assert_close(target.xs[-1], expected)
                assert policy.calls == calls and out.rollout_nfe == out.rollout_samples == 0
    assert not any(decisions[:1]) and any(decisions[:12]) and not all(decisions[12:])
    assert sum(decisions[12:]) / 28 == pytest.approx(0.75, abs=0.2)


def test_the_curriculum_needs_targets_for_its_data_states():
    teacher, batch, sigmas = setup()
    method = DistillMethod(DistillParams(on_policy=0.0))
    with pytest.raises(FieldkitError, match="off-policy states needs clean target images"):
        method.loss(inputs(teacher, Batch(batch.cond, None), sigmas, gen(0)))


# -- refusals through the graph ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "fragment"),
    [
        ("{type: offpolicy, buffer: 2}", "buffer > 1 keeps rollouts, but states is 'data'"),
        ("{type: danceopd, reuse: 4, staleness: 2}", "staleness 2 is below reuse - 1 = 3"),
        ("{type: danceopd, staleness: 3}", "none are kept (reuse: 1, buffer: 1)"),
        ("{type: danceopd, buffer: 2, staleness: -1}", "greater than or equal to 0"),
        ("{type: offpolicy, start_sigma: 0.5}", "start_sigma starts a partial rollout, but states is 'data'"),
        ("{type: danceopd, start_sigma: 0}", "greater than 0"),
        ("{type: danceopd, start_sigma: 1.5}", "less than or equal to 1"),
        ("{type: danceopd, start_from: source}", "set start_sigma too"),
        ("{type: danceopd, start_from: noise, start_sigma: 0.5}", "'target' or 'source'"),
        ("{type: offpolicy, on_policy: 0.5}", "mixes rollout states with data states"),
        ("{type: danceopd, states: data, handover: 10}", "mixes rollout states with data states"),
        ("{type: danceopd, on_policy: 1.5}", "less than or equal to 1"),
        ("{type: danceopd, handover: -1}", "greater than or equal to 0"),
    ],
)
def test_each_bad_combination_is_one_graph_error(method, fragment):
    with pytest.raises(GraphError) as info:
        loads_graph(DISTILL, [f"method={method}"])
    assert fragment in str(info.value)


def test_the_options_compose_in_a_valid_graph():
    graph = loads_graph(
        DISTILL,
        [
            "method={type: danceopd, k: 2, reuse: 2, buffer: 3, staleness: 4, start_sigma: 0.7, "
            "on_policy: 0.9, handover: 20}"
        ],
    )
    assert graph.method.params.buffer == 3
    # ``fieldkit schema`` (editor completion) lists them under every DanceOPD-family method.
    defs = graph_schema(get_host().registry)["$defs"]
    methods = [d for d in defs.values() if "reuse" in d.get("properties", {})]
    assert {"danceopd", "offpolicy", "dense"} <= {d["properties"]["type"]["const"] for d in methods}
    options = {"buffer", "staleness", "start_sigma", "start_from", "on_policy", "handover"}
    assert all(options <= d["properties"].keys() for d in methods)


def test_the_engine_hands_the_method_its_step(distill_world):
    """``on_policy: 1, handover: 2``: update 0 is off-policy for sure and updates 2 on on-policy for sure,
    which only holds when the engine passes each update's step (always 0 would make every update off)."""
    steps = engine("method={type: danceopd, handover: 2, query: all}", "run.steps=4").steps()
    passes = [report.update.rollout_nfe for report in steps]
    assert passes[0] == 0 and passes[2] == passes[3] == 7
