"""Routing: hard routes send each route's samples to its own field only, one route per update (G = 1) or
every route (G = M), with frequencies that follow the weights; soft routing supervises with the mix."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from toy_world import AffineField, AffineParams

from fieldkit import loads_graph
from fieldkit.analytic import GaussianMixtureField
from fieldkit.cond import Cond
from fieldkit.distill.engine import Engine
from fieldkit.distill.routing import HardRouter, Route, SoftRouter
from fieldkit.flow import sigma_schedule
from fieldkit.plugins import hookimpl

TWO_ROUTES = """
fields:
  ta: {type: affine, seed: 1, tag: a}
  tb: {type: affine, seed: 3, tag: b}
  init: {type: affine, seed: 2}
routes:
  a: {field: ta, weight: 3, data: {type: marked, marker: 1, classes: 3}}
  b: {field: tb, weight: 1, data: {type: marked, marker: 2, classes: 5, seed: 1}}
student: {init: init}
router: {type: hard}
flow: {steps: 6}
run: {steps: 30, batch_size: 4, grad_accum: 3, lr: 0.01, device: cpu}
"""


def engine(*overrides: str) -> Engine:
    return Engine(loads_graph(textwrap.dedent(TWO_ROUTES), overrides), write=False, show_progress=False)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    stat = float(((counts - expected) ** 2 / expected).sum())
    df = len(counts) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0), torch.tensor(stat / 2.0)))


class Dummy:
    shape = (1,)

    def sample(self, batch_size, generator):  # pragma: no cover - never sampled here
        raise AssertionError


def routes(weights=(3.0, 1.0, 2.0), fields=None):
    fields = fields or [None] * len(weights)
    return [Route(f"r{i}", f, Dummy(), w) for i, (w, f) in enumerate(zip(weights, fields, strict=True))]


# -- the router on its own ----------------------------------------------------------------------------------


def test_update_granularity_gives_one_route_per_update_with_weighted_frequencies():
    router = HardRouter(routes(), "update")
    g = gen(1)
    plans = [router.plan(4, g, 0) for _ in range(6000)]
    assert all(len(p) == 4 and len(set(p)) == 1 for p in plans)
    counts = np.bincount([p[0] for p in plans], minlength=3).astype(float)
    assert chi2_pvalue(counts, np.array([3, 1, 2]) / 6) > 1e-3
    assert chi2_pvalue(counts, np.ones(3) / 3) < 1e-12  # the test can tell the weights apart


def test_sample_granularity_draws_every_micro_batch():
    router = HardRouter(routes(), "sample")
    g = gen(2)
    plans = [router.plan(4, g, 0) for _ in range(3000)]
    assert sum(len(set(p)) > 1 for p in plans) > 2000  # P(all four equal) = 1/6: most plans mix routes
    counts = np.bincount([i for p in plans for i in p], minlength=3).astype(float)
    assert chi2_pvalue(counts, np.array([3, 1, 2]) / 6) > 1e-3


@pytest.mark.parametrize(("micro", "expected"), [(1, [0, 1, 2]), (3, [0, 1, 2]), (5, [0, 1, 2, 0, 1])])
def test_all_granularity_visits_every_route_each_update(micro, expected):
    router = HardRouter(routes(), "all")
    g = gen(3)
    state = g.get_state()
    assert router.plan(micro, g, 0) == expected
    assert torch.equal(g.get_state(), state)  # nothing is drawn


def test_hard_target_is_the_route_field_and_soft_target_is_the_weighted_mix():
    fa, fb = (
        GaussianMixtureField.random(2, (1, 3, 3), seed=1),
        GaussianMixtureField.random(2, (1, 3, 3), seed=2),
    )
    hard = HardRouter(routes((3.0, 1.0), [fa, fb]))
    assert hard.target(0) is fa and hard.target(1) is fb
    soft = SoftRouter(routes((3.0, 1.0), [fa, fb]))
    x = torch.randn((5, 1, 3, 3), generator=gen(4))
    sigma = torch.rand(5, generator=gen(5))
    cond = Cond(label=torch.tensor([0, 1, 1, 0, 1]))
    want = (3 * fa(x, sigma, cond) + fb(x, sigma, cond)) / 4
    for i in (0, 1):
        torch.testing.assert_close(soft.target(i)(x, sigma, cond), want)
    with pytest.raises(ValueError, match="give every route a field"):
        SoftRouter(routes((1.0, 1.0), [fa, None]))
    with pytest.raises(ValueError, match="at least one route"):
        HardRouter([])


# -- routing inside the engine -------------------------------------------------------------------------------


def teacher_log(e: Engine) -> list[dict]:
    log: list[dict] = []
    for name in ("ta", "tb"):
        e.session.ctx.field(name).log = log
    return log


def chunks(log: list[dict], size: int) -> list[list[dict]]:
    assert len(log) % size == 0
    return [log[i : i + size] for i in range(0, len(log), size)]


def test_hard_routing_update_keeps_each_route_on_its_own_field_and_one_route_per_update(distill_world):
    e = engine("router.granularity=update")
    log = teacher_log(e)
    res = e.run()
    assert res.step == 30 and len(log) == 30 * 3  # K = 1: one target query per micro-batch
    marker = {"a": 1, "b": 2}
    for entry in log:
        assert bool((entry["route"] == marker[entry["tag"]]).all()), "a sample reached another route's field"
    updates = chunks(log, 3)
    for update, record in zip(updates, res.history, strict=True):
        tags = {entry["tag"] for entry in update}
        assert len(tags) == 1  # G = 1: every micro-batch of an update shares the route
        assert record["route"] == tags.pop()
    assert {r["route"] for r in res.history} == {"a", "b"}
    assert res.route_steps == {r: sum(h["route"] == r for h in res.history) for r in ("a", "b")}


def test_hard_routing_all_visits_every_route_in_every_update(distill_world):
    e = engine("router.granularity=all", "run.steps=10", "run.grad_accum=1")
    log = teacher_log(e)
    res = e.run()
    # grad_accum 1 with two routes: each update runs max(1, M) = 2 micro-batches, a then b.
    for update in chunks(log, 2):
        assert [entry["tag"] for entry in update] == ["a", "b"]
        for entry in update:
            assert bool((entry["route"] == {"a": 1, "b": 2}[entry["tag"]]).all())
    assert all(r["route"] == "a+b" for r in res.history)
    # Each route's summary loss is its own loss, not the mixed update's.
    for name in ("a", "b"):
        own = [r[f"loss/{name}"] for r in res.history]
        assert res.route_loss[name] == pytest.approx(sum(own) / len(own))
    assert res.route_loss["a"] != pytest.approx(res.route_loss["b"])
    assert res.route_steps == {"a": 10, "b": 10}
    for r in res.history:  # the update's loss is the mean over its micro-batches
        assert r["loss"] == pytest.approx((r["loss/a"] + r["loss/b"]) / 2)


def test_route_frequencies_in_a_run_follow_the_weights(distill_world):
    e = engine("run.steps=200", "run.grad_accum=1", "run.batch_size=2", "flow.steps=2")
    res = e.run()
    count_a = sum(r["route"] == "a" for r in res.history)
    mean, sd = 200 * 0.75, (200 * 0.75 * 0.25) ** 0.5
    assert abs(count_a - mean) < 4 * sd, count_a
    assert res.route_steps["a"] == count_a and res.route_steps["b"] == 200 - count_a


def test_soft_routing_mixes_fields_and_the_student_learns_the_weighted_mix(distill_world):
    e = engine("router.type=soft", "run.steps=250", "run.grad_accum=1", "run.lr=0.05", "run.batch_size=8")
    log = teacher_log(e)
    res = e.run()
    # Every micro-batch asks both fields, whatever bucket it came from.
    assert {(entry["tag"], int(entry["route"][0])) for entry in log} == {
        ("a", 1),
        ("a", 2),
        ("b", 1),
        ("b", 2),
    }
    ta, tb = e.session.ctx.field("ta"), e.session.ctx.field("tb")
    for name in ("a", "b", "c"):
        want = (3 * getattr(ta, name) + getattr(tb, name)) / 4  # exactly representable by the student
        torch.testing.assert_close(getattr(res.student, name).detach(), want, atol=2e-3, rtol=0)
    assert res.history[-1]["loss"] < 1e-5 * res.history[0]["loss"]


# -- one rollout schedule per route -------------------------------------------------------------------------


class ShiftingField(AffineField):
    """An affine field whose own pipeline shifts its schedule by the latent's width (as a dynamically shifting
    scheduler does): shift ``W / 2``."""

    def sampling_sigmas(self, steps: int, shape: tuple[int, ...]) -> torch.Tensor:
        return sigma_schedule(steps, shape[-1] / 2)


class Shifting:
    @hookimpl
    def fieldkit_register_sources(self, register) -> None:
        register("shifting", lambda p, ctx: ShiftingField(p.channels, p.seed, p.tag), AffineParams)


SIZES = """
fields:
  teacher: {type: shifting, seed: 1}
  init: {type: shifting, seed: 2}
routes:
  small: {field: teacher, data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}}
  large: {field: teacher, data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 8]}}
student: {init: init}
method: {type: danceopd, k: 3, query: uniform}
flow: {steps: 4}
run: {steps: 8, batch_size: 4, lr: 0.01, device: cpu}
"""


def test_each_route_rolls_out_on_the_schedule_of_its_own_data_shape(distill_world):
    distill_world.register(Shifting(), "shifting")
    try:
        e = Engine(loads_graph(textwrap.dedent(SIZES)), write=False, show_progress=False)
        want = {"small": sigma_schedule(4, 2.0), "large": sigma_schedule(4, 4.0)}
        assert e.session.sigmas.keys() == want.keys()
        for route, sigmas in want.items():
            assert torch.equal(e.session.sigmas[route], sigmas)
        log: list[dict] = []
        e.session.ctx.field("teacher").log = log
        e.run()
    finally:
        distill_world.unregister("shifting")
    queried = {"small": set(), "large": set()}
    for entry in log:  # the teacher's queries: each at a state of its route's rollout
        route = "large" if entry["x"].shape[-1] == 8 else "small"
        queried[route] |= {round(float(s), 6) for s in entry["sigma"]}
    for route, sigmas in want.items():
        assert queried[route] and queried[route] <= {round(float(s), 6) for s in sigmas[:-1]}
