"""The training loop shared by DanceOPD, its baselines and SFT: routing, micro-batches, accumulation,
clipping, the bad-step policy and the logging intervals, over a :class:`~fieldkit.distill.session.Session`.

:meth:`Engine.steps` yields a :class:`~fieldkit.distill.callbacks.StepReport` after every optimizer update and
calls the hooks of the callbacks it is given; :meth:`Engine.run` is that loop with the default callbacks
(:mod:`fieldkit.distill.outputs`: ``metrics.jsonl`` and the console, sample grids, checkpoints, export,
evaluation, ``results.json``, ``report.html``, trackers). A study script drives the same loop::

    engine = Engine(graph, write=False)
    for report in engine.steps([MyCallback()]):
        if report.applied and report.step % 100 == 0:
            print(report.step, report.update.loss)

Only the engine moves the counters (``step``, ``bad_steps``); ``run.max_bad_steps`` non-finite updates in a
row end the run with an error. A callback or the loop body ends the run early with
``engine.request_stop(reason)``: the loop stops after the current update and the callbacks' ``on_run_end``
hooks run as at ``run.steps``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Unpack

import torch
from rich.markup import escape
from torch import Tensor, nn

from fieldkit.attention import use_backend
from fieldkit.backbones.traced import replayed_passes
from fieldkit.distill.callbacks import Callback, StepReport, every, state_key
from fieldkit.distill.interval import IntervalMeans
from fieldkit.distill.outputs import RunLogger, default_callbacks
from fieldkit.distill.session import Session, SessionOptions, precision_context
from fieldkit.distill.sharding import full_tensor
from fieldkit.distill.view import EngineView
from fieldkit.errors import FieldkitError, PluginError
from fieldkit.eval.report import Score
from fieldkit.graph.loader import Graph
from fieldkit.graph.schema import RunSpec
from fieldkit.plugin_outputs import check_batch, check_gradient_reaches, check_loss, check_plan
from fieldkit.plugins.exits import EXIT_HINT, raised_at
from fieldkit.protocols import LossInputs


@dataclass(frozen=True)
class Passes:
    """Sample-forwards of one update: the student's with gradients (``train``, each also a backward), the
    student's without (``rollout``), and the route fields' networks (``teacher``)."""

    train: int = 0
    rollout: int = 0
    teacher: int = 0

    @property
    def total(self) -> int:
        """Model passes per sample, a backward counted as two forwards: ``rollout + teacher + 3 train``."""
        return self.rollout + self.teacher + 3 * self.train


@dataclass(frozen=True)
class Update:
    """One optimizer update: the routes its micro-batches drew (in order, each once), the global batch's
    mean loss and each route's, the gradient norm before clipping, the learning rate it used, whether it was
    applied (``finite``), its passes, rollout cost and timings (seconds)."""

    routes: tuple[str, ...]
    loss: float
    route_losses: dict[str, float]
    grad_norm: float
    lr: float
    finite: bool
    passes: Passes
    rollout_nfe: int
    rollout_samples: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    def record(self, step: int) -> dict[str, Any]:
        """Its log record, as ``metrics.jsonl`` writes it (``step``: the step it makes)."""
        return {
            "step": step,
            "route": "+".join(self.routes),
            "loss": self.loss,
            **{f"loss/{name}": value for name, value in self.route_losses.items()},
            "grad_norm": self.grad_norm,
            "lr": self.lr,
            "rollout_nfe": self.rollout_nfe,
            "rollout_samples": self.rollout_samples,
            "passes": self.passes.total,
            "time/step": self.seconds,
            **{f"time/{k}": v for k, v in self.timings.items()},
            "steps_per_s": 1.0 / self.seconds if self.seconds > 0 else 0.0,
            "finite": self.finite,
        }


@dataclass
class RunResult:
    """What a finished run reports."""

    out: Path | None
    step: int
    bad_steps: int
    checkpoint: Path | None
    route_steps: dict[str, int]
    route_loss: dict[str, float]
    student: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    scores: list[Score] = field(default_factory=list)


class Engine:
    """Trains a graph's student: the loop over a :class:`Session` built from ``graph`` (same arguments)."""

    def __init__(
        self, graph: Graph, out: str | Path | None = None, **options: Unpack[SessionOptions]
    ) -> None:
        self.session = Session(graph, out, **options)
        self.history: list[dict[str, Any]] = []
        self.scores: list[Score] = []
        self._interval = IntervalMeans(self.session.loop_state.get("interval", []))
        self._callbacks: list[Callback] = []
        self._stop: str | None = None
        self._view = EngineView(self)
        self._warned_zero_grad = False

    @property
    def step(self) -> int:
        """Optimizer updates applied so far (read-only: only the loop moves it)."""
        return self.session.step

    @property
    def bad_steps(self) -> int:
        """Updates skipped for a non-finite loss or gradient so far (read-only)."""
        return self.session.bad_steps

    def request_stop(self, reason: str = "stop requested") -> None:
        """End :meth:`steps` after the current update, as if ``run.steps`` were reached."""
        self._stop = reason

    # -- one optimizer update ------------------------------------------------------------------------
    def update(self) -> Update:
        """One optimizer update (all its micro-batches), applied when its loss and gradient are finite."""
        s = self.session
        acc, run = s.accelerator, s.run_spec
        routes = s.router.routes
        planned = s.router.plan(run.grad_accum, s.generators["router"], s.step)
        plan = check_plan(planned, len(routes), run.grad_accum, s.who_router)
        losses: dict[str, list[Tensor]] = defaultdict(list)
        timings: dict[str, float] = defaultdict(float)
        nfe = rollout_samples = 0
        t_start = time.perf_counter()
        with count_passes(s.student, s.teachers) as passes, replayed_passes(s.replay):
            for i, index in enumerate(plan):
                route, n = routes[index], run.batch_size * s.shard.world
                batch = check_batch(route.data.sample(n, s.generators["data"]), n, s.who_data[route.name])
                batch = batch.to(acc.device)
                sync = acc.no_sync(s.model) if i < len(plan) - 1 else contextlib.nullcontext()
                with sync:
                    with precision_context(run.precision, acc.device):  # forwards only; backward follows
                        inputs = LossInputs(
                            student=s.model,
                            policy=s.student,
                            target=s.router.target(index),
                            batch=batch,
                            shape=tuple(route.data.shape),
                            sigmas=s.sigmas[route.name],
                            generator=s.generators["noise"],
                            shard=s.shard,
                            step=s.step,
                        )
                        out = check_loss(s.method.loss(inputs), s.who_method)
                    t0 = time.perf_counter()
                    acc.backward(out.loss / len(plan))
                    timings["student_backward"] += time.perf_counter() - t0
                losses[route.name].append(out.loss.detach().float())
                nfe += out.rollout_nfe
                rollout_samples += out.rollout_samples
                for key, seconds in out.timings.items():
                    timings[key] += seconds
        check_gradient_reaches(s.params, s.who_method)
        # The global batch's losses (each process's shard averaged in one all-reduce): every process logs
        # what one process would, and all take the same finite / non-finite decision below.
        means = [torch.stack(v).mean() for v in losses.values()]
        means.append(torch.stack([x for v in losses.values() for x in v]).mean())
        reduced = torch.stack(means)
        if acc.num_processes > 1:
            reduced = acc.reduce(reduced, "mean")
        *route_means, total = reduced.tolist()
        clip = run.grad_clip if run.grad_clip is not None else math.inf
        grad_norm = float(full_tensor(acc.clip_grad_norm_(s.params, clip)))
        finite = math.isfinite(total) and math.isfinite(grad_norm)
        if grad_norm == 0.0 and not self._warned_zero_grad:
            self._warned_zero_grad = True
            s.note(
                f"[yellow]warning:[/] {escape(s.who_method)}: the gradient norm of update {s.step + 1} is "
                "exactly 0: its loss does not move the student (a target equal to the prediction, or a loss "
                "that does not depend on it)",
                always=True,
            )
        lr = s.optimizer.param_groups[0]["lr"]
        if finite:
            s.optimizer.step()
            s.lr_schedule.step()
            if s.ema is not None:
                s.ema.update(s.student)
        s.optimizer.zero_grad(set_to_none=True)
        return Update(
            routes=tuple(dict.fromkeys(routes[i].name for i in plan)),
            loss=total,
            route_losses=dict(zip(losses, route_means, strict=True)),
            grad_norm=grad_norm,
            lr=lr,
            finite=finite,
            passes=Passes(**passes),
            rollout_nfe=nfe,
            rollout_samples=rollout_samples,
            seconds=time.perf_counter() - t_start,
            timings=dict(timings),
        )

    # -- the loop ---------------------------------------------------------------------------------------
    def steps(self, callbacks: Sequence[Callback] = ()) -> Generator[StepReport, None, None]:
        """Train to ``run.steps`` (or a requested stop), yielding a report after every optimizer update.

        ``callbacks`` get their hooks called in order (see :mod:`fieldkit.distill.callbacks`). Breaking out of
        the loop ends it without ``on_run_end``; ``request_stop`` ends it with it.
        """
        s, run = self.session, self.session.run_spec
        self._callbacks, self._stop = list(callbacks), None
        view = self._view
        saved = self.session.loop_state.get("callbacks", {})
        consecutive_bad = 0
        try:
            for cb in self._callbacks:
                if isinstance(saved, dict) and isinstance(saved.get(state_key(cb)), dict):
                    cb.load_state_dict(saved[state_key(cb)])
                cb.on_run_start(view)
            with use_backend(run.attention) if run.attention else contextlib.nullcontext():
                while s.step < run.steps and self._stop is None:
                    update = plugin_code(self.update, s.step)
                    means = None
                    if update.finite:
                        consecutive_bad = 0
                        s.step += 1
                        record = update.record(s.step)
                        self.history.append(record)
                        self._interval.add(record)
                        if _log_now(run, s.step):
                            means = self._interval.flush()
                    else:
                        s.bad_steps += 1
                        consecutive_bad += 1
                        if consecutive_bad >= run.max_bad_steps:
                            last = s.checkpoint or "none was written"
                            raise FieldkitError(
                                f"{consecutive_bad} optimizer steps in a row had a non-finite loss or "
                                f"gradient; stopped at step {s.step} (last good checkpoint: {last})",
                                hint="lower run.lr, enable run.grad_clip, or check the teachers' outputs",
                            )
                        record = {**update.record(s.step + 1), "bad_steps": s.bad_steps}
                    report = StepReport(s.step, update.finite, s.bad_steps, update, record, means)
                    for cb in self._callbacks:
                        cb.on_update_end(view, report)
                    view.drop_copy()  # training goes on: no inference copy held through it
                    yield report
            for cb in self._callbacks:
                cb.on_run_end(view)
        finally:
            callbacks_now, self._callbacks = self._callbacks, []
            for cb in callbacks_now:
                cb.teardown(view)
            view.drop_copy()
            s.release()  # the run is over, however it ended: the folder is free

    def run(
        self, callbacks: Sequence[Callback] = (), *, replace: Mapping[str, Callback | None] | None = None
    ) -> RunResult:
        """:meth:`steps` with the default callbacks (``replace`` swaps or drops some by name, see
        :func:`~fieldkit.distill.outputs.default_callbacks`), then ``callbacks``; returns the result (the
        student is the unwrapped, trained module)."""
        everything = [*default_callbacks(**(replace or {})), *callbacks]
        for _ in self.steps(everything):
            pass
        log = next((cb.log for cb in everything if isinstance(cb, RunLogger)), None)
        losses = log.route_loss if log is not None else {}
        s = self.session
        return RunResult(
            s.out,
            s.step,
            s.bad_steps,
            s.checkpoint,
            dict(log.route_steps) if log is not None else {},
            {r: sum(v[-20:]) / len(v[-20:]) for r, v in losses.items() if v},
            s.student,
            self.history,
            self.scores,
        )

    def loop_state(self) -> dict[str, Any]:
        """What a checkpoint keeps beside the weights: the open logging interval and the callbacks' states."""
        states = {state_key(cb): cb.state_dict() for cb in self._callbacks}
        return {"interval": self._interval.records, "callbacks": {k: v for k, v in states.items() if v}}

    def publish(self, hook: str, *args: Any) -> None:
        """Call ``hook`` (``on_samples``, ``on_checkpoint``, ``on_evaluation``) of every callback."""
        for cb in self._callbacks:
            getattr(cb, hook)(self._view, *args)


def _log_now(run: RunSpec, step: int) -> bool:
    """Whether ``step`` ends a logging interval (every ``run.log_every`` steps, and the last)."""
    return every(step, run.log_every) or step == run.steps


@contextlib.contextmanager
def count_passes(student: nn.Module, teachers: Sequence[nn.Module]) -> Iterator[dict[str, int]]:
    """Count sample-forwards while the block runs (forward hooks, removed on exit, so evaluations between
    updates and copies of the student made from it count nothing): ``train`` and ``rollout`` for the
    student's forwards with and without gradients, ``teacher`` for the ``teachers``'."""
    count = {"train": 0, "rollout": 0, "teacher": 0}

    def rows(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        x = args[0] if args else kwargs.get("x")
        return int(x.shape[0]) if isinstance(x, Tensor) and x.dim() > 0 else 0

    def on_student(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _out: Any) -> None:
        count["train" if torch.is_grad_enabled() else "rollout"] += rows(args, kwargs)

    def on_teacher(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _out: Any) -> None:
        count["teacher"] += rows(args, kwargs)

    handles = [student.register_forward_hook(on_student, with_kwargs=True)]
    handles += [t.register_forward_hook(on_teacher, with_kwargs=True) for t in teachers if t is not student]
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


def plugin_code(call: Any, step: int) -> Update:
    """``call()``, where a ``sys.exit`` from the plugins it runs (fields, methods, routers, buckets) is an
    error that names where it was called, never a quiet exit that leaves no checkpoint or student."""
    try:
        result: Update = call()
    except SystemExit as exc:
        raise PluginError(
            f"{raised_at(exc)}: sys.exit({exc.code!r}) was called during training (update {step + 1}); "
            "fieldkit treats it as an error: the run stopped without finishing",
            hint=EXIT_HINT,
        ) from exc
    return result
