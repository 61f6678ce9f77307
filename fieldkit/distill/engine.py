"""The training loop shared by DanceOPD, its baselines and SFT: routing, micro-batches, accumulation,
clipping, non-finite guards, EMA and resume, through accelerate.

The loop is public: :meth:`Engine.steps` yields a :class:`~fieldkit.distill.callbacks.StepReport` after every
optimizer update and calls the hooks of the callbacks it is given; :meth:`Engine.run` is that loop with the
default callbacks (``metrics.jsonl`` and the console, sample grids, checkpoints, export, evaluation and
``results.json``). A study script drives the same loop::

    engine = Engine(graph, write=False)
    for report in engine.steps([MyCallback()]):
        if report.applied and report.step % 100 == 0:
            print(report.step, report.record["loss"])

Only the engine moves its counters (``step``, ``bad_steps``); the bad-step policy (``run.max_bad_steps``
non-finite updates in a row end the run with an error) lives inside the loop. A callback or the loop body ends
the run early with ``engine.request_stop(reason)``: the loop stops after the current update and the callbacks'
``on_run_end`` hooks run as at ``run.steps``. See :mod:`fieldkit.distill.callbacks` for the hooks.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import defaultdict
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType
from rich.markup import escape
from safetensors.torch import save_file
from torch import Tensor, nn

from fieldkit.atomic import atomic_path
from fieldkit.attention import use_backend
from fieldkit.compile import compile_fields
from fieldkit.data import Shard, batch_captions, evaluation_bucket
from fieldkit.distill.callbacks import Callback, RunLogger, StepReport, default_callbacks
from fieldkit.distill.checkpoint import (
    TrainState,
    check_optimizer_state,
    checkpoint_path,
    load_resumable,
    save_checkpoint,
)
from fieldkit.distill.ema import EMA
from fieldkit.distill.optim import make_lr_schedule, make_optimizer, restore_lr_schedule
from fieldkit.distill.route_checks import check_routes
from fieldkit.distill.rundir import open_for_processes
from fieldkit.distill.runlog import trim_metrics
from fieldkit.distill.sharding import (
    PlainCopy,
    broadcast_from_main,
    enable_fsdp,
    full_state,
    full_tensor,
    load_shards,
    save_sharded_checkpoint,
    shard_frozen,
    sharded_state,
    teacher_sources,
    use_shard_units,
)
from fieldkit.distill.student import make_student, trainable_state
from fieldkit.errors import CheckpointError, FieldkitError
from fieldkit.eval.grid import save_grid
from fieldkit.eval.report import Score, evaluate
from fieldkit.flow import generate, rollout_sigmas
from fieldkit.graph.builder import BuildContext
from fieldkit.graph.loader import Graph
from fieldkit.graph.schema import FsdpSpec
from fieldkit.models.lora import merge_and_strip
from fieldkit.protocols import LossInputs, Method, Router

GENERATORS = ("router", "data", "noise")


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


def make_accelerator(
    device: str, precision: str = "fp32", parallel: str = "ddp", fsdp: FsdpSpec | None = None
) -> Accelerator:
    """An Accelerator for ``run.device`` (auto/cpu/cuda[:N]/mps); with several processes, DDP or (``parallel``
    ``fsdp``) FSDP2 with the settings ``fsdp`` (:func:`~fieldkit.distill.sharding.enable_fsdp`). One process
    is never sharded: ``fsdp`` there is plain training.

    Mixed precision is the engine's own autocast (:func:`precision_context`), not accelerate's: accelerate
    keeps one process-wide state that refuses a second precision, and a process may run several graphs.
    A launcher's ``--mixed_precision`` (``ACCELERATE_MIXED_PRECISION``) that disagrees with ``run.precision``
    is refused rather than silently changing the losses that graph.json says were fp32.
    """
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched not in ("no", {"fp32": "no"}.get(precision, precision)):
        raise FieldkitError(
            f"accelerate was launched with mixed precision {launched!r} (ACCELERATE_MIXED_PRECISION) but "
            f"run.precision is {precision!r}; fieldkit applies precision itself, from the graph",
            hint=f"set run.precision: {launched} in the graph, or launch with --mixed_precision no",
        )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FieldkitError(f"run.device is {device!r} but CUDA is not available", hint="use run.device=auto")
    if device.startswith("cuda:"):
        torch.cuda.set_device(int(device.split(":", 1)[1]))
    cpu = device == "cpu" or (
        device == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available()
    )
    # A student's parameters may go unused in a step (MMDiT's text layers when a route has no text; an
    # edit route's source path): DDP must look for them rather than wait for their gradients forever.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    acc = Accelerator(cpu=cpu, mixed_precision="no", kwargs_handlers=[ddp])
    launched_world = int(os.environ.get("WORLD_SIZE", "1"))
    if launched_world != acc.num_processes:
        raise FieldkitError(
            f"launched as {launched_world} processes, but accelerate joined {acc.num_processes} "
            f"(run.device is {device!r}); each process would train and write on its own",
            hint="on CPUs set run.device: cpu; on GPUs check that every process sees one",
        )
    if parallel == "fsdp" and acc.num_processes > 1:
        enable_fsdp(acc, fsdp or FsdpSpec())
    return acc


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to bf16 for ``run.precision: bf16`` (weights, grads and optimizer stay fp32)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise FieldkitError("run.precision is bf16 but this GPU has no bf16 support", hint="use fp32")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _output_path(graph: Graph, out: str | Path | None) -> str:
    return str(out) if out is not None else graph.spec.run.out.format(graph=graph.name)


class Engine:
    """Builds a graph's router, method and student and trains the student."""

    def __init__(
        self,
        graph: Graph,
        out: str | Path | None = None,
        *,
        resume: str | None = None,
        show_progress: bool = True,
        accelerator: Accelerator | None = None,
        write: bool = True,
    ) -> None:
        spec = graph.spec
        if spec.student is None:
            raise FieldkitError("the graph has no 'student' section", hint="add student: {init: FIELD_NAME}")
        if not spec.routes:
            raise FieldkitError("the graph has no routes to train on", hint="add a 'routes' section")
        self.graph = graph
        self.run_spec = spec.run
        self.accelerator = accelerator or make_accelerator(
            spec.run.device, spec.run.precision, spec.run.parallel, spec.run.fsdp
        )
        acc = self.accelerator
        # Checked and locked before anything is built; only the main process writes into it.
        self.folder = open_for_processes(_output_path(graph, out), resume, acc) if write else None
        self.out = self.folder.path if self.folder is not None else None
        resume = self.folder.resume if self.folder is not None else None
        self.ctx = BuildContext(graph, device=acc.device)
        self.router: Router = self.ctx.router()
        self.method: Method = self.ctx.method()
        init = self.ctx.field(spec.student.init)
        steps, shape = self.method.rollout_steps(spec.flow.steps), tuple(self.router.routes[0].data.shape)
        self.sigmas = rollout_sigmas(spec.flow.schedule, steps, spec.flow.shift, init, shape).to(acc.device)
        seed = spec.run.seed
        # Seeded before the student is made: LoRA adapters are initialised from the global RNG.
        torch.manual_seed(seed + acc.process_index)
        student = make_student(init, spec.student).to(acc.device)
        # run.compile: the student's and the teachers' forwards, per block, in place (fieldkit.compile).
        compile_fields([student, *(route.field for route in self.router.routes)], spec.run.compile)
        #: FSDP: the student's parameters are shards; reading its full weights is a collective.
        self.sharded = acc.distributed_type == DistributedType.FSDP
        self.shard = Shard(acc.process_index, acc.num_processes, lockstep=self.sharded)
        self._plain: PlainCopy | None = None
        if self.sharded:
            self._plain = PlainCopy(student)
            broadcast_from_main(student)
            use_shard_units(acc, student)
            if spec.run.fsdp.teachers == "shard":
                teachers = [route.field for route in self.router.routes]
                for source in teacher_sources(teachers, self.ctx.built_fields()):
                    shard_frozen(source, acc.device)
        optimizer = make_optimizer([p for p in student.parameters() if p.requires_grad], spec.run)
        self.lr_schedule = make_lr_schedule(optimizer, spec.run)
        self.model, self.optimizer = acc.prepare(student, optimizer)
        self.student: nn.Module = acc.unwrap_model(self.model)
        # After prepare: FSDP replaces the parameters with sharded ones (and points the optimizer at them).
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        self.ema = EMA(self.student, spec.student.ema) if spec.student.ema else None
        # Same streams on every process: the global batch is drawn everywhere and sharded (see Shard).
        self.generators = {
            name: torch.Generator().manual_seed(seed * 1000 + i) for i, name in enumerate(GENERATORS)
        }
        self._step = 0
        self._bad_steps = 0
        self.history: list[dict[str, Any]] = []
        self.checkpoint: Path | None = None
        self.scores: list[Score] = []
        self.show_progress = show_progress
        self._callbacks: list[Callback] = []
        self._stop: str | None = None
        for note in self.folder.notes if self.folder is not None else []:
            self._note(f"[yellow]note:[/] {escape(note)}", always=True)
        self._resume_from(resume)
        check_routes(
            self.ctx,
            self.router.routes,
            self.student,
            self.sigmas,
            precision_context(spec.run.precision, acc.device),
        )

    @property
    def step(self) -> int:
        """Optimizer updates applied so far (read-only: only the loop moves it)."""
        return self._step

    @property
    def bad_steps(self) -> int:
        """Updates skipped for a non-finite loss or gradient so far (read-only)."""
        return self._bad_steps

    def request_stop(self, reason: str = "stop requested") -> None:
        """End :meth:`steps` after the current update, as if ``run.steps`` were reached."""
        self._stop = reason

    # -- state ------------------------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Tensor]:
        state = {name: g.get_state() for name, g in self.generators.items()}
        state["torch"] = torch.get_rng_state()
        return state

    def _state(self) -> TrainState:
        scalars = {
            "bad_steps": self.bad_steps,
            "processes": self.accelerator.num_processes,
            "lr_schedule": self.lr_schedule.state_dict(),
        }
        if self.sharded:  # the weights, optimizer and EMA are the shard files (sharded_state)
            return TrainState(self.step, {}, {}, self._rng_state(), None, scalars, sharded=True)
        ema = self.ema.state_dict() if self.ema is not None else None
        return TrainState(
            self.step,
            trainable_state(self.student),
            self.optimizer.state_dict(),
            self._rng_state(),
            ema,
            scalars,
        )

    def _resume_from(self, which: str | None) -> None:
        if which is None:
            return
        assert self.out is not None
        path, state, skipped = load_resumable(self.out / "checkpoints", which, self._load_fitting)
        for reason in skipped:
            self._note(f"[yellow]skipping a bad checkpoint:[/] {escape(reason.message)}", always=True)
        if path is None or state is None:
            newest = skipped[0].message if skipped else None
            raise CheckpointError(
                f"{self.out / 'checkpoints'}: no checkpoint to resume from"
                + (f" (the newest one: {newest})" if newest else ""),
                hint=(skipped[0].hint if skipped else None)
                or "start without --resume, or point --resume at a checkpoint folder",
            )
        for group in self.optimizer.param_groups:  # the graph's settings win over the checkpoint's
            group["weight_decay"] = self.run_spec.weight_decay
        restore_lr_schedule(self.lr_schedule, state.scalars.get("lr_schedule"), state.step, self.run_spec)
        saved_world = int(state.scalars.get("processes", self.shard.world))
        if saved_world != self.shard.world:
            self._note(
                f"[yellow]note:[/] the run was written by {saved_world} process(es) and resumes on "
                f"{self.shard.world}: the global batch changes from {saved_world * self.run_spec.batch_size} "
                f"to {self.shard.world * self.run_spec.batch_size}",
                always=True,
            )
        for name, gen in self.generators.items():
            gen.set_state(state.rng[name])
        torch.set_rng_state(state.rng["torch"])
        if self.ema is not None and state.ema is not None:
            self.ema.load_state_dict(state.ema)
        self._step = state.step
        self._bad_steps = int(state.scalars.get("bad_steps", 0))
        self.checkpoint = path
        self._trim_metrics(state.step)
        self._note(f"resumed from {escape(str(path))} at step {state.step}")

    def _load_fitting(self, path: Path, state: TrainState) -> None:
        """Load a checkpoint's student and optimizer state, or raise CheckpointError (changing nothing)
        when they, or its RNG states, do not fit this run."""
        fresh = {name: g.get_state() for name, g in self.generators.items()}
        fresh["torch"] = torch.get_rng_state()
        if any(name not in state.rng or state.rng[name].shape != t.shape for name, t in fresh.items()):
            raise CheckpointError(f"{path}: its RNG states do not fit this run")
        if state.sharded or self.sharded:
            self._load_shards(path, state)
            return
        trained = {k: v.clone() for k, v in trainable_state(self.student).items()}
        try:
            missing, unexpected = self.student.load_state_dict(state.student, strict=False)
        except RuntimeError:  # shape mismatches raise even when not strict
            missing, unexpected = [], ["(a tensor of another shape)"]
        try:
            if unexpected or set(trained) & set(missing):
                raise CheckpointError(
                    f"{path}: its weights do not fit this graph's student",
                    hint="resume with the same graph (and student settings) that wrote it",
                )
            check_optimizer_state(path, state.optimizer, self.params)
            try:
                self.optimizer.load_state_dict(state.optimizer)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise CheckpointError(f"{path}: its optimizer state does not fit this run: {exc}") from None
        except CheckpointError:
            self.student.load_state_dict(trained, strict=False)
            raise

    def _load_shards(self, path: Path, state: TrainState) -> None:
        """Load an FSDP checkpoint into this run's shards, or raise CheckpointError when it is not one
        written by this many processes (or this run is not sharded)."""
        saved = state.scalars.get("processes")
        world = self.accelerator.num_processes
        if not state.sharded:
            raise CheckpointError(
                f"{path}: it holds whole weights (written without FSDP), and this run shards them",
                hint="resume it with run.parallel: ddp (and the processes that wrote it)",
            )
        if not self.sharded or saved != world:
            which = (
                f"this run has {world}" if saved != world else "this run does not shard (run.parallel: ddp)"
            )
            raise CheckpointError(
                f"{path}: it holds FSDP shards written by {saved} process(es); {which}",
                hint=f"resume it with run.parallel: fsdp on {saved} processes (accelerate launch "
                f"--num_processes {saved})",
            )
        ema = self.ema.shadow if self.ema is not None else None
        load_shards(path, self.student, self.optimizer.optimizer, ema)

    def _trim_metrics(self, step: int) -> None:
        """Drop metric lines written after the checkpoint we resume from (a torn last line too)."""
        assert self.out is not None
        if self.accelerator.is_main_process:
            for note in trim_metrics(self.out / "metrics.jsonl", step):
                self._note(f"[yellow]note:[/] {escape(note)}", always=True)

    def _note(self, message: str, always: bool = False) -> None:
        """Print on the main process; warnings (``always``) also print when progress output is off."""
        if self.accelerator.is_main_process and (self.show_progress or always):
            from rich.console import Console

            Console(stderr=True).print(message)

    # -- one optimizer update ------------------------------------------------------------------------
    def update(self) -> dict[str, Any]:
        """One optimizer update (all its micro-batches); returns its log record (``finite``: applied)."""
        acc, run = self.accelerator, self.run_spec
        plan = self.router.plan(run.grad_accum, self.generators["router"])
        losses: dict[str, list[Tensor]] = defaultdict(list)
        timings: dict[str, float] = defaultdict(float)
        nfe = rollout_samples = 0
        t_start = time.perf_counter()
        for i, index in enumerate(plan):
            route = self.router.routes[index]
            batch = route.data.sample(run.batch_size * self.shard.world, self.generators["data"]).to(
                acc.device
            )
            sync = acc.no_sync(self.model) if i < len(plan) - 1 else contextlib.nullcontext()
            with sync:
                with precision_context(run.precision, acc.device):  # forwards only; backward follows them
                    inputs = LossInputs(
                        student=self.model,
                        policy=self.student,
                        target=self.router.target(index),
                        batch=batch,
                        shape=tuple(route.data.shape),
                        sigmas=self.sigmas,
                        generator=self.generators["noise"],
                        shard=self.shard,
                    )
                    out = self.method.loss(inputs)
                t0 = time.perf_counter()
                acc.backward(out.loss / len(plan))
                timings["student_backward"] += time.perf_counter() - t0
            losses[route.name].append(out.loss.detach().float())
            nfe += out.rollout_nfe
            rollout_samples += out.rollout_samples
            for key, seconds in out.timings.items():
                timings[key] += seconds
        # The global batch's losses (each process's shard averaged in one all-reduce): every process logs
        # what one process would, and all take the same finite / non-finite decision below.
        means = [torch.stack(v).mean() for v in losses.values()]
        means.append(torch.stack([x for v in losses.values() for x in v]).mean())
        reduced = torch.stack(means)
        if acc.num_processes > 1:
            reduced = acc.reduce(reduced, "mean")
        *route_means, total = reduced.tolist()
        clip = run.grad_clip if run.grad_clip is not None else math.inf
        grad_norm = float(full_tensor(acc.clip_grad_norm_(self.params, clip)))
        finite = math.isfinite(total) and math.isfinite(grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        if finite:
            self.optimizer.step()
            self.lr_schedule.step()
            if self.ema is not None:
                self.ema.update(self.student)
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t_start
        record: dict[str, Any] = {
            "step": self.step + 1,
            "route": "+".join(dict.fromkeys(self.router.routes[i].name for i in plan)),
            "loss": total,
            **{f"loss/{name}": value for name, value in zip(losses, route_means, strict=True)},
            "grad_norm": grad_norm,
            "lr": lr,
            "rollout_nfe": nfe,
            "rollout_samples": rollout_samples,
            "time/step": elapsed,
            **{f"time/{k}": v for k, v in timings.items()},
            "steps_per_s": 1.0 / elapsed if elapsed > 0 else 0.0,
            "finite": finite,
        }
        return record

    # -- the loop ---------------------------------------------------------------------------------------
    def steps(self, callbacks: Sequence[Callback] = ()) -> Generator[StepReport, None, None]:
        """Train to ``run.steps`` (or a requested stop), yielding a report after every optimizer update.

        ``callbacks`` get their hooks called in order (see :mod:`fieldkit.distill.callbacks`). Breaking out of
        the loop ends it without ``on_run_end``; ``request_stop`` ends it with it.
        """
        run = self.run_spec
        self._callbacks, self._stop = list(callbacks), None
        consecutive_bad = 0
        try:
            for cb in self._callbacks:
                cb.on_run_start(self)
            with use_backend(run.attention) if run.attention else contextlib.nullcontext():
                while self._step < run.steps and self._stop is None:
                    record = self.update()
                    applied = bool(record["finite"])
                    if applied:
                        consecutive_bad = 0
                        self._step += 1
                        self.history.append(record)
                    else:
                        self._bad_steps += 1
                        consecutive_bad += 1
                        if consecutive_bad >= run.max_bad_steps:
                            last = self.checkpoint or "none was written"
                            raise FieldkitError(
                                f"{consecutive_bad} optimizer steps in a row had a non-finite loss or "
                                "gradient; "
                                f"stopped at step {self._step} (last good checkpoint: {last})",
                                hint="lower run.lr, enable run.grad_clip, or check the teachers' outputs",
                            )
                        record["bad_steps"] = self._bad_steps
                    report = StepReport(self._step, applied, self._bad_steps, record)
                    for cb in self._callbacks:
                        cb.on_update_end(self, report)
                    yield report
            for cb in self._callbacks:
                cb.on_run_end(self)
        finally:
            callbacks_now, self._callbacks = self._callbacks, []
            for cb in callbacks_now:
                cb.teardown(self)
            if self.folder is not None:  # the run is over, however it ended: the folder is free
                self.folder.release()

    def run(self, callbacks: Sequence[Callback] = ()) -> RunResult:
        """:meth:`steps` with the default callbacks (then ``callbacks``); returns the result (the student is
        the unwrapped, trained module)."""
        everything = [*default_callbacks(), *callbacks]
        for _ in self.steps(everything):
            pass
        log = next(cb.log for cb in everything if isinstance(cb, RunLogger))
        assert log is not None
        return RunResult(
            self.out,
            self.step,
            self.bad_steps,
            self.checkpoint,
            dict(log.route_steps),
            {r: sum(v[-20:]) / len(v[-20:]) for r, v in log.route_loss.items() if v},
            self.student,
            self.history,
            self.scores,
        )

    def evaluate(self, samples: int | None = None) -> list[Score]:
        """Score every route's field and the student with the routes' metrics (empty when none are set);
        the callbacks' ``on_evaluation`` hooks see the scores."""
        routes = self.router.routes
        if not any(r.metrics for r in routes):
            return []
        fields = {str(self.graph.spec.routes[r.name].field): r.field for r in routes if r.field is not None}
        self.scores = evaluate(
            {**fields, "student": self.inference_model()},
            routes,
            self.sigmas,
            samples or self.run_spec.eval_samples,
            device=self.accelerator.device,
        )
        for cb in self._callbacks:
            cb.on_evaluation(self, self.scores)
        return self.scores

    def inference_model(self) -> nn.Module:
        """The student as it is exported and evaluated: EMA weights when EMA is on, LoRA merged, eval mode.

        Under FSDP (``self.sharded``) this is a collective that every process must call: each gets a plain,
        whole copy gathered from the shards.
        """
        if self._plain is None:
            return export_model(self.student, self.ema)
        model = self._plain.build(full_state(self.student), self.accelerator.device)
        if self.ema is not None:
            self.ema.copy_to(model)
        return export_model(model)

    # -- outputs (main process writes; every process waits) -----------------------------------------------
    def save(self) -> Path | None:
        """Write a checkpoint of the current state (atomic; keeps the newest ``run.keep_last``)."""
        acc = self.accelerator
        if self.out is None:
            return None
        # The state at a step that already has its checkpoint (checkpoint_every, then the end of the run; or
        # a resumed run with nothing left to do) is that checkpoint: never delete and rewrite it.
        root = self.out / "checkpoints"
        done = self.checkpoint == checkpoint_path(root, self.step)
        if not (done and self.checkpoint is not None and self.checkpoint.is_dir()):
            if self.sharded:  # every process writes its shards
                ema = self.ema.shadow if self.ema is not None else None
                shards = sharded_state(self.student, self.optimizer.optimizer, ema)
                save_sharded_checkpoint(acc, root, self._state(), shards, self.run_spec.keep_last)
            elif acc.is_main_process:
                save_checkpoint(root, self._state(), self.run_spec.keep_last)
        acc.wait_for_everyone()
        self.checkpoint = checkpoint_path(root, self.step)
        for cb in self._callbacks:
            cb.on_checkpoint(self, self.checkpoint)
        return self.checkpoint

    def sample_grids(self, n: int = 8, seed: int = 1234) -> list[Path]:
        """One PNG per route: the route's field (or its data) in the top row, the student below. Under FSDP
        every process computes them (sharded forwards are collectives); the main process writes."""
        acc = self.accelerator
        paths: list[Path] = []
        if self.out is None or not (acc.is_main_process or self.sharded):
            return paths
        policy = self.inference_model()
        for route in self.router.routes:
            bucket = evaluation_bucket(route.data)
            batch = bucket.sample(n, torch.Generator().manual_seed(seed))
            shape = tuple(route.data.shape)
            rows, labels = [], []
            if batch.source is not None:  # an edit route: its source images first
                rows.append(batch.source)
                labels.append("source")
            field_name = self.graph.spec.routes[route.name].field
            if route.field is not None:
                labels.append(f"teacher: {field_name}")
                rows.append(
                    generate(
                        route.field,
                        batch.cond,
                        shape,
                        self.sigmas,
                        torch.Generator().manual_seed(seed),
                        acc.device,
                    )
                )
            elif batch.target is not None:
                rows.append(batch.target)
                labels.append("data")
            rows.append(
                generate(
                    policy, batch.cond, shape, self.sigmas, torch.Generator().manual_seed(seed), acc.device
                )
            )
            labels.append("student")
            if acc.is_main_process:
                path = self.out / "samples" / f"step-{self.step:08d}-{route.name}.png"
                paths.append(save_grid(rows, path, row_labels=labels, captions=batch_captions(bucket, batch)))
        return paths

    def export(self) -> Path | None:
        """Save the student (EMA weights when on, LoRA merged) where ``fieldkit.checkpoint`` reads it."""
        acc = self.accelerator
        if self.out is None:
            return None
        target = self.out / "student"
        model = self.inference_model() if acc.is_main_process or self.sharded else None
        if model is not None and acc.is_main_process:
            with atomic_path(target, folder=True) as tmp:
                save_pretrained = getattr(model, "save_pretrained", None)
                if callable(save_pretrained):
                    save_pretrained(tmp)
                else:  # a model without its own format: its weights alone
                    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
                    save_file(weights, tmp / "model.safetensors")
        acc.wait_for_everyone()
        return target


def export_model(student: nn.Module, ema: EMA | None = None) -> nn.Module:
    """A plain copy of the student for export: EMA weights applied, LoRA adapters merged and removed."""
    import copy

    model = copy.deepcopy(student)
    if ema is not None:
        ema.copy_to(model)
    return merge_and_strip(model).eval()
