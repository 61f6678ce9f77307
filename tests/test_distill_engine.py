"""The engine end to end on a closed-form world: DanceOPD learns an exactly representable teacher, every
baseline is one YAML switch, rollouts stop early, students (full, LoRA, EMA) leave their sources alone,
and non-finite steps are skipped, counted and never applied."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from fieldkit import loads_graph
from fieldkit.analytic import GaussianMixtureField
from fieldkit.distill.checkpoint import list_checkpoints, load_checkpoint
from fieldkit.distill.engine import Engine
from fieldkit.distill.session import export_model
from fieldkit.errors import FieldkitError
from fieldkit.flow import euler_sample

AFFINE = """
fields:
  teacher: {type: affine, seed: 1}
  init: {type: affine, seed: 2}
routes:
  r: {field: teacher, data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}}
student: {init: init}
router: {type: hard}
method: {type: danceopd}
flow: {steps: 8}
run: {steps: 300, batch_size: 8, lr: 0.05, device: cpu}
"""

LINEAR = """
fields:
  teacher: {type: linear, seed: 1}
  init: {type: linear, seed: 2}
routes:
  r: {field: teacher, data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}}
student: {init: init, train: lora, lora: {rank: 2}}
flow: {steps: 6}
run: {steps: 60, batch_size: 8, lr: 0.05, device: cpu}
"""

PARAMS = ("a", "b", "c")


def graph(text: str = AFFINE, *overrides: str):
    return loads_graph(textwrap.dedent(text), overrides)


def engine(*overrides: str, text: str = AFFINE, **kwargs) -> Engine:
    kwargs.setdefault("write", False)
    return Engine(graph(text, *overrides), show_progress=False, **kwargs)


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- DanceOPD learns what it can represent ---------------------------------------------------------------


def test_danceopd_learns_the_exact_weights_of_an_affine_teacher(distill_world):
    e = engine()
    teacher, init = e.session.ctx.field("teacher"), e.session.ctx.field("init")
    teacher_before, init_before = weights(teacher), weights(init)
    res = e.run()
    assert res.step == 300 and res.bad_steps == 0 and len(res.history) == 300
    for name in PARAMS:
        got, want = getattr(res.student, name).detach(), getattr(teacher, name).detach()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert not torch.allclose(getattr(init, name), want, atol=0.05)  # it had something to learn
    assert res.history[0]["loss"] > 0.1
    assert res.history[-1]["loss"] < 1e-9
    assert res.route_loss["r"] < 1e-9 and res.route_steps == {"r": 300}
    # Frozen sources: untouched, no grads, never handed to accelerate.
    assert_same(weights(teacher), teacher_before)
    assert_same(weights(init), init_before)
    for field in (teacher, init):
        assert not field.training
        assert all(not p.requires_grad and p.grad is None for p in field.parameters())
    assert res.student is e.session.student and res.student is not init


def test_rollout_nfe_is_the_last_queried_index_and_states_follow_the_student(distill_world):
    e = engine("run.steps=4", "run.grad_accum=2", "method.k=2", "method.query=uniform")
    log: list[dict] = []
    e.session.student.log, e.session.ctx.field("teacher").log = log, log
    e.session.student.tag = "student"
    res = e.run()
    sigmas = e.session.sigmas["r"]
    # Per micro-batch the calls are: student x NFE (rollout), teacher x 1 (the query), student x 1 (loss).
    micro, rollout = [], []
    for entry in log:
        if entry["tag"] == "student" and not entry["x"].requires_grad and entry["x"].is_inference():
            rollout.append(entry)
        elif entry["tag"] == "":
            micro.append((rollout, entry))
            rollout = []
    assert len(micro) == 4 * 2
    for calls, query in micro:
        # The schedule index of each query (sigmas decrease, hence the signs).
        idx = torch.searchsorted(-sigmas, -query["sigma"])
        torch.testing.assert_close(sigmas[idx], query["sigma"], rtol=0, atol=0)
        assert len(calls) == int(idx.max())  # stopped at the last queried index
        # States queried before the stop are the rollout's own pre-step states. The rollout sorts its rows
        # by last index (longest first) and a sample leaves after its last query: call i sees the prefix
        # of that order still needed.
        rows = torch.arange(8).repeat_interleave(2)
        row_last = idx.view(8, 2).max(dim=1).values
        order = torch.argsort(row_last, descending=True, stable=True).tolist()
        for j, (row, i) in enumerate(zip(rows.tolist(), idx.tolist(), strict=True)):
            if i < int(row_last[row]):
                running = int((row_last > i).sum())
                assert calls[i]["x"].shape[0] == running
                assert row in order[:running]
                torch.testing.assert_close(query["x"][j], calls[i]["x"][order.index(row)], rtol=0, atol=0)
    nfe = [len(calls) for calls, _ in micro]
    assert [r["rollout_nfe"] for r in res.history] == [nfe[i] + nfe[i + 1] for i in range(0, 8, 2)]
    # The first micro-batch ran with the initial weights (the frozen init node's): a full recorded rollout
    # of init from the same noise gives every queried state.
    calls, query = micro[0]
    idx = torch.searchsorted(-sigmas, -query["sigma"]).view(8, 2)
    order = torch.argsort(idx.max(dim=1).values, descending=True, stable=True)
    noise = torch.empty_like(calls[0]["x"])
    noise[order] = calls[0]["x"]  # the first call holds every row, in the rollout's order
    full = euler_sample(e.session.ctx.field("init"), noise, query_cond(e), sigmas, record=True).states
    want = full[idx, torch.arange(8).unsqueeze(1)].flatten(0, 1)
    torch.testing.assert_close(query["x"], want)


def query_cond(e: Engine):
    """The Cond of the first micro-batch, redrawn from the data generator's initial state."""
    route = e.session.router.routes[0]
    return route.data.sample(8, torch.Generator().manual_seed(e.session.run_spec.seed * 1000 + 1)).cond


# -- baselines are YAML switches -----------------------------------------------------------------------


BASELINES = {
    "offpolicy": ["method.type=offpolicy"],
    "teacher-states": ["method.states=teacher"],
    "dense": ["method.type=dense"],
    "timestep-weighting": ["method.weighting=timestep"],
    "soft-router": ["router.type=soft"],
    "granularity-all": ["router.granularity=all", "run.grad_accum=2"],
    "mid-k2": ["method.query=mid", "method.k=2"],
}


@pytest.mark.parametrize("name", list(BASELINES))
def test_baselines_run_and_reduce_the_loss(distill_world, name):
    res = engine("run.steps=60", *BASELINES[name]).run()
    losses = [r["loss"] for r in res.history]
    assert len(losses) == 60 and res.bad_steps == 0
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert last < 0.05 * first, (first, last)
    nfe = [r["rollout_nfe"] for r in res.history]
    if name == "offpolicy":
        assert set(nfe) == {0}
    elif name == "dense":
        assert set(nfe) == {7}  # every pre-step state of 8 steps: index 7 is the last
    else:
        assert max(nfe) > 0


SFT = """
fields:
  init: {type: affine, seed: 2}
routes:
  r: {data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}}
student: {init: init}
method: {type: sft}
run: {steps: 600, batch_size: 64, lr: 0.01, device: cpu}
"""


def test_sft_approaches_the_best_affine_fit_of_the_flow_matching_target(distill_world):
    e = engine(text=SFT)
    init = e.session.ctx.field("init")
    res = e.run()
    # The best affine fit v = a x + b sigma + c label of E[eps - x0 | x_sigma, label] under the same data and
    # the same logit-normal sigma, by least squares on a large Monte-Carlo sample.
    mixture = GaussianMixtureField.random(3, (1, 4, 4), seed=0)
    g = torch.Generator().manual_seed(0)
    n = 50_000
    label = torch.randint(3, (n,), generator=g)
    x0 = mixture.means[label] + 0.1 * torch.randn((n, 1, 4, 4), generator=g)
    s = torch.sigmoid(torch.randn(n, generator=g)).view(-1, 1, 1, 1)
    eps = torch.randn((n, 1, 4, 4), generator=g)
    x = (1 - s) * x0 + s * eps
    feats = torch.stack([x, s.expand_as(x), label.view(-1, 1, 1, 1).expand_as(x).float()], -1).reshape(-1, 3)
    feats, target = feats.double(), (eps - x0).reshape(-1, 1).double()
    best = torch.linalg.lstsq(feats, target).solution.flatten()

    def population_loss(theta) -> float:
        return float(((feats @ torch.as_tensor(theta, dtype=torch.float64) - target.flatten()) ** 2).mean())

    def params(m) -> list[float]:
        return [float(getattr(m, k).detach()) for k in PARAMS]

    excess_init = population_loss(params(init)) - population_loss(best)
    excess_sft = population_loss(params(res.student)) - population_loss(best)
    assert excess_init > 0.03
    assert 0 <= excess_sft < 0.05 * excess_init, (excess_init, excess_sft)
    losses = [r["loss"] for r in res.history]
    assert sum(losses[-100:]) / 100 < sum(losses[:20]) / 20
    assert {r["rollout_nfe"] for r in res.history} == {0}


# -- students --------------------------------------------------------------------------------------------


def test_lora_trains_only_the_adapters_and_leaves_the_init_node_alone(distill_world):
    e = engine(text=LINEAR)
    init, teacher = e.session.ctx.field("init"), e.session.ctx.field("teacher")
    init_before, teacher_before = weights(init), weights(teacher)
    trainable = {n for n, p in e.session.student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {id(p) for p in e.session.params} == {
        id(p) for p in e.session.student.parameters() if p.requires_grad
    }
    before = weights(e.session.student)
    res = e.run()
    after = weights(res.student)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if "lora_" in k} and changed
    assert torch.equal(after["lin.base_layer.weight"], init_before["lin.weight"])
    assert torch.equal(after["lin.base_layer.bias"], init_before["lin.bias"])
    assert_same(weights(init), init_before)
    assert_same(weights(teacher), teacher_before)
    losses = [r["loss"] for r in res.history]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:3]) / 3
    # Export merges the adapters into a plain Linear that computes the same field.
    plain = export_model(res.student)
    assert not any("lora_" in n for n, _ in plain.named_parameters())
    x, sigma = torch.randn(4, 1, 4, 4), torch.rand(4)
    cond = e.session.router.routes[0].data.sample(4, torch.Generator().manual_seed(0)).cond
    res.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x, sigma, cond), res.student(x, sigma, cond))


def test_lora_runs_are_reproducible(distill_world):
    first = engine("run.steps=3", text=LINEAR).run().student
    torch.manual_seed(12345)  # whatever the global RNG was doing before
    second = engine("run.steps=3", text=LINEAR).run().student
    assert_same(weights(first), weights(second))


def test_ema_shadow_follows_its_formula_and_is_what_is_exported(distill_world, tmp_path):
    decay = 0.8
    e = engine("run.steps=12", f"student.ema={decay}", write=True, out=tmp_path / "run")
    snapshots = [weights(e.session.student)]
    e.session.optimizer.optimizer.register_step_post_hook(
        lambda *_: snapshots.append(weights(e.session.student))
    )
    e.run()
    assert len(snapshots) == 13
    for name in PARAMS:
        theta = [s[name].double() for s in snapshots]
        want = decay**12 * theta[0] + sum((1 - decay) * decay ** (12 - t) * theta[t] for t in range(1, 13))
        torch.testing.assert_close(e.session.ema.shadow[name].double(), want, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(e.session.ema.shadow["a"], snapshots[-1]["a"])
    exported = load_file(tmp_path / "run" / "student" / "model.safetensors")
    for name in PARAMS:
        torch.testing.assert_close(exported[name], e.session.ema.shadow[name], rtol=0, atol=0)
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    for name in PARAMS:
        torch.testing.assert_close(ckpt.ema[name], e.session.ema.shadow[name], rtol=0, atol=0)
        torch.testing.assert_close(ckpt.student[name], snapshots[-1][name], rtol=0, atol=0)


# -- non-finite steps ------------------------------------------------------------------------------------


def test_nan_steps_are_skipped_counted_and_never_applied(distill_world):
    e = engine("run.steps=12", "run.max_bad_steps=3")
    teacher = e.session.ctx.field("teacher")
    teacher.calls = 0  # count update attempts only (the engine's build-time check called it once)
    bad = {3, 4, 9}
    teacher.nan_on = lambda call: call in bad
    seen: list[dict] = []  # the student's weights at each teacher call: one call per update attempt
    teacher.on_call = lambda _: seen.append(weights(e.session.student))
    res = e.run()
    assert res.step == 12 and res.bad_steps == 3 and len(res.history) == 12
    assert all(r["finite"] for r in res.history) and [r["step"] for r in res.history] == list(range(1, 13))
    assert len(seen) == 15
    seen.append(weights(res.student))
    for attempt in range(1, 16):
        before, after = seen[attempt - 1], seen[attempt]
        same = all(torch.equal(before[k], after[k]) for k in before)
        assert same == (attempt in bad), attempt
    state = e.session.optimizer.state_dict()["state"]
    assert all(int(slot["step"]) == 12 for slot in state.values())  # Adam stepped on good updates only
    assert sum(res.route_steps.values()) == 12


def test_a_teacher_that_turns_nan_stops_the_run_and_the_last_checkpoint_survives(distill_world, tmp_path):
    out = tmp_path / "run"
    overrides = ("run.steps=10", "run.checkpoint_every=2", "run.max_bad_steps=3", "run.log_every=1")
    e = engine(*overrides, write=True, out=out)
    teacher = e.session.ctx.field("teacher")
    teacher.calls = 0  # count update attempts only (the engine's build-time check called it once)
    teacher.nan_on = lambda call: call > 5
    seen: list[dict] = []
    teacher.on_call = lambda _: seen.append(weights(e.session.student))
    with pytest.raises(FieldkitError, match="3 optimizer steps in a row") as err:
        e.run()
    assert "step-00000004" in str(err.value) and "stopped at step 5" in str(err.value)
    ckpts = list_checkpoints(out / "checkpoints")
    assert [p.name for p in ckpts] == ["step-00000002", "step-00000004"]
    state = load_checkpoint(ckpts[-1])
    assert state.step == 4 and state.scalars["bad_steps"] == 0
    for name in PARAMS:  # the weights after step 4 are what attempt 5 saw
        assert torch.equal(state.student[name], seen[4][name])
    # Resuming with a healthy teacher finishes the run; metrics.jsonl holds each step once.
    res = engine(*overrides, write=True, out=out, resume="latest").run()
    assert res.step == 10 and res.bad_steps == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 11))
    assert all(r["finite"] for r in records)


def test_no_student_or_routes_is_a_clear_error(distill_world):
    text = textwrap.dedent(AFFINE)
    with pytest.raises(FieldkitError, match="no 'student' section"):
        Engine(loads_graph(text.replace("student: {init: init}\n", "")), write=False)
    with pytest.raises(FieldkitError, match=r"student.init: 'init' is an operator \(toward_source\)"):
        operator = text.replace("init: {type: affine, seed: 2}", "init: {type: toward_source}")
        Engine(loads_graph(operator), write=False)  # refused by validation, before anything is built
    with pytest.raises(FieldkitError, match="has no weights to train"):
        mixture = "init: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}"
        no_weights = text.replace("init: {type: affine, seed: 2}", mixture)
        Engine(loads_graph(no_weights), write=False)


def test_bf16_precision_runs_the_student_under_autocast_and_keeps_fp32_weights(distill_world):
    e = engine("run.steps=3", "run.precision=bf16", text=LINEAR)
    dtypes: list[torch.dtype] = []
    hook = e.session.student.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    try:
        res = e.run()
    finally:
        hook.remove()
    assert res.step == 3 and res.bad_steps == 0
    assert torch.bfloat16 in dtypes  # the forwards ran in bf16 ...
    assert all(p.dtype == torch.float32 for p in e.session.student.parameters())  # ... the weights stay fp32
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in res.history)
