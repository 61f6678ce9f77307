"""A training session: everything the loop trains, wired from a graph, and the state a checkpoint keeps.

:class:`Session` sets up accelerate (one process, DDP or FSDP), opens the run folder, builds the graph's
router, method and student, the optimizer, learning-rate schedule, EMA and random streams; it saves that state
as a checkpoint, resumes from one, and makes the student's inference copy (EMA weights, LoRA merged). It
trains nothing: the loop is :class:`fieldkit.distill.engine.Engine`.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType
from rich.markup import escape
from torch import Tensor, nn

from fieldkit.capabilities import HasCheckpointState
from fieldkit.compile import compile_fields
from fieldkit.data import Shard
from fieldkit.distill.checkpoint import (
    TrainState,
    check_optimizer_state,
    checkpoint_path,
    load_resumable,
    save_checkpoint,
)
from fieldkit.distill.ema import EMA
from fieldkit.distill.optim import make_lr_schedule, make_optimizer, restore_lr_schedule
from fieldkit.distill.route_checks import check_routes, data_who, who_at
from fieldkit.distill.rundir import open_for_processes
from fieldkit.distill.runlog import trim_metrics
from fieldkit.distill.sharding import (
    PlainCopy,
    broadcast_from_main,
    enable_fsdp,
    full_state,
    load_shards,
    save_sharded_checkpoint,
    shard_frozen,
    sharded_state,
    teacher_sources,
    use_shard_units,
)
from fieldkit.distill.student import make_student, trainable_state
from fieldkit.errors import CheckpointError, FieldkitError
from fieldkit.flow import rollout_sigmas
from fieldkit.graph.builder import BuildContext
from fieldkit.graph.loader import Graph
from fieldkit.graph.schema import FsdpSpec
from fieldkit.models.lora import merge_and_strip
from fieldkit.protocols import Method, Route, Router

GENERATORS = ("router", "data", "noise")


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
    dynamo = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "no")
    if dynamo.lower() not in ("", "no"):
        raise FieldkitError(
            f"accelerate was launched with dynamo backend {dynamo!r} (ACCELERATE_DYNAMO_BACKEND), which "
            "would compile the student whatever the graph's run.compile says (and graph.json records); "
            "fieldkit compiles from the graph",
            hint="set run.compile in the graph, and launch with --dynamo_backend no",
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
    launched_world = check_rendezvous()
    with rendezvous_deadline(launched_world):
        acc = Accelerator(cpu=cpu, mixed_precision="no", dynamo_backend="no", kwargs_handlers=[ddp])
    if acc.num_processes == 1 and launched_world == 1 and os.environ.get("MASTER_ADDR"):
        _one_of_many_note(acc)
    if launched_world != acc.num_processes:
        raise FieldkitError(
            f"launched as {launched_world} processes, but accelerate joined {acc.num_processes} "
            f"(run.device is {device!r}); each process would train and write on its own",
            hint="on CPUs set run.device: cpu; on GPUs check that every process sees one",
        )
    if parallel == "fsdp" and acc.num_processes > 1:
        enable_fsdp(acc, fsdp or FsdpSpec())
    return acc


LAUNCH_HINT = (
    "launch several processes with accelerate's launcher, which starts the peers and sets these variables: "
    "accelerate launch --num_processes N -m fieldkit distill GRAPH (see docs/reliability.md); for one "
    "process, unset WORLD_SIZE"
)
#: Seconds the processes of a launch get to find each other before fieldkit gives up (exit 2).
RENDEZVOUS_TIMEOUT = 300.0


def check_rendezvous() -> int:
    """The number of processes the environment asks for (``WORLD_SIZE``), after checking that a process group
    can form: more than one needs ``MASTER_ADDR`` and ``MASTER_PORT`` (which a launcher sets), and a
    ``WORLD_SIZE`` that is not a count is refused."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(raw)
    except ValueError:
        raise FieldkitError(
            f"WORLD_SIZE is {raw!r} in the environment, not a process count", hint=LAUNCH_HINT
        ) from None
    if world < 1:
        raise FieldkitError(
            f"WORLD_SIZE is {world} in the environment; it counts processes", hint=LAUNCH_HINT
        )
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if world > 1 and missing:
        raise FieldkitError(
            f"WORLD_SIZE is {world} in the environment but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set: the {world} processes have no rendezvous "
            "to meet at, and this one would wait for its peers forever",
            hint=LAUNCH_HINT,
        )
    return world


@contextlib.contextmanager
def rendezvous_deadline(world: int) -> Iterator[None]:
    """Around the process group's start: when its ``world`` processes have not all joined within
    ``FIELDKIT_RENDEZVOUS_TIMEOUT`` seconds (default :data:`RENDEZVOUS_TIMEOUT`), print why and exit 2
    (nothing was written: the run folder is opened after). One process starts no group: no deadline."""
    if world <= 1:
        yield
        return
    import threading

    raw = os.environ.get("FIELDKIT_RENDEZVOUS_TIMEOUT", "")
    try:
        seconds = float(raw) if raw else RENDEZVOUS_TIMEOUT
    except ValueError:
        seconds = RENDEZVOUS_TIMEOUT
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"

    def give_up() -> None:
        import sys

        sys.stderr.write(
            f"Error: process {os.environ.get('RANK', '?')} of {world} waited {seconds:g} s at {where} "
            f"(MASTER_ADDR:MASTER_PORT) and not all {world} processes joined; nothing was written\n"
            f"  hint: {LAUNCH_HINT}; FIELDKIT_RENDEZVOUS_TIMEOUT sets the wait in seconds\n"
        )
        sys.stderr.flush()
        os._exit(2)  # the main thread is blocked inside the C++ rendezvous: no exception reaches it

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _one_of_many_note(acc: Accelerator) -> None:
    """A launch that asked for several processes (``MASTER_ADDR`` set, as ``accelerate launch --num_processes
    N`` sets it) but started this one alone (``accelerate launch --cpu`` runs one process whatever N is)."""
    if acc.is_main_process:
        from rich.console import Console

        Console(stderr=True).print(
            "[yellow]note:[/] the environment names a rendezvous (MASTER_ADDR="
            f"{escape(os.environ.get('MASTER_ADDR', ''))}, as `accelerate launch --num_processes N` sets it) "
            "but accelerate started one process, and this run trains alone: `accelerate launch --cpu` runs "
            "one process whatever --num_processes says; for N CPU processes use `accelerate launch "
            "--multi_gpu --num_processes N` with run.device: cpu"
        )


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to bf16 for ``run.precision: bf16`` (weights, grads and optimizer stay fp32)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise FieldkitError("run.precision is bf16 but this GPU has no bf16 support", hint="use fp32")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def output_path(graph: Graph, out: str | Path | None) -> str:
    """The run's folder: ``out`` as given, else the graph's ``run.out`` with ``{graph}`` filled in."""
    return str(out) if out is not None else graph.spec.run.out.format(graph=graph.name)


class SessionOptions(TypedDict, total=False):
    """:class:`Session`'s keyword arguments, which an :class:`~fieldkit.distill.engine.Engine` passes on."""

    resume: str | None
    show_progress: bool
    accelerator: Accelerator | None
    write: bool


class Session:
    """A graph's training state, built and (with ``resume``) restored; ``write=False`` opens no run folder.

    ``step`` and ``bad_steps`` are the counters a checkpoint saves (the loop moves them); ``loop_state`` is
    what the loop and its callbacks saved beside the weights in the checkpoint this session resumed from.
    """

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
        if spec.run.report_to:  # a tracker that cannot start fails now, not after the teachers load
            from fieldkit.distill.trackers import check_logins, installed

            check_logins(installed(list(spec.run.report_to)))
        self.graph = graph
        self.run_spec = spec.run
        self.show_progress = show_progress
        self.accelerator = accelerator or make_accelerator(
            spec.run.device, spec.run.precision, spec.run.parallel, spec.run.fsdp
        )
        acc = self.accelerator
        # Checked and locked before anything is built; only the main process writes into it.
        self.folder = open_for_processes(output_path(graph, out), resume, acc) if write else None
        self.out = self.folder.path if self.folder is not None else None
        try:
            self._build(graph, self.folder.resume if self.folder is not None else None)
        except BaseException:
            if self.folder is not None:  # a start that failed frees the folder (and leaves no debris)
                self.folder.abandon()
            raise

    def _build(self, graph: Graph, resume: str | None) -> None:
        """Build the fields, the student, its optimizer and the random streams; restore ``resume``."""
        spec, acc = graph.spec, self.accelerator
        assert spec.student is not None  # refused in __init__
        self.ctx = BuildContext(graph, device=acc.device)
        self.router: Router = self.ctx.router()
        self.method: Method = self.ctx.method()
        #: Who made what the loop checks (``file:line: key: KIND type 'T' (plugin 'P')``), for its messages.
        self.who_router = who_at(self.ctx, ("router",), graph.router)
        self.who_method = who_at(self.ctx, ("method",), graph.method)
        self.who_data = {route.name: data_who(self.ctx, route.name) for route in self.router.routes}
        init = self.ctx.field(spec.student.init)
        steps = self.method.rollout_steps(spec.flow.steps)
        #: Each route's rollout schedule, from its own data shape (a dynamically shifting scheduler shifts
        #: each latent size by its own amount).
        self.sigmas: dict[str, Tensor] = {
            route.name: rollout_sigmas(
                spec.flow.schedule, steps, spec.flow.shift, init, tuple(route.data.shape)
            ).to(acc.device)
            for route in self.router.routes
        }
        seed = spec.run.seed
        # Seeded before the student is made: LoRA adapters are initialised from the global RNG.
        torch.manual_seed(seed + acc.process_index)
        student = make_student(init, spec.student).to(acc.device)
        # run.compile: the student's and the teachers' forwards, per block, in place (fieldkit.compile).
        compile_fields([student, *(route.field for route in self.router.routes)], spec.run.compile)
        #: The frozen networks the routes' fields call (the sources inside operators), each once.
        self.teachers = teacher_sources(
            [route.field for route in self.router.routes], self.ctx.built_fields()
        )
        #: FSDP: the student's parameters are shards; reading its full weights is a collective.
        self.sharded: bool = acc.distributed_type == DistributedType.FSDP
        #: run.trace: the update's no-grad passes replayed (fieldkit.backbones.traced), on eager models only.
        self.replay: bool = spec.run.trace and spec.run.compile == "off" and not self.sharded
        self.shard = Shard(acc.process_index, acc.num_processes, lockstep=self.sharded)
        self._plain: PlainCopy | None = None
        if self.sharded:
            self._plain = PlainCopy(student)
            broadcast_from_main(student)
            use_shard_units(acc, student)
            if spec.run.fsdp.teachers == "shard":
                for source in self.teachers:
                    shard_frozen(source, acc.device)
        optimizer = make_optimizer([p for p in student.parameters() if p.requires_grad], spec.run)
        self.lr_schedule = make_lr_schedule(optimizer, spec.run)
        self.model, self.optimizer = acc.prepare(student, optimizer)
        self.student: nn.Module = acc.unwrap_model(self.model)
        # After prepare: FSDP replaces the parameters with sharded ones (and points the optimizer at them).
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        self.ema = EMA(self.student, spec.student.ema) if spec.student.ema else None
        # Same streams on every process: the global batch is drawn everywhere and sharded (see Shard).
        # Wrapped to the generator's 64-bit seed (the same streams for every seed below 2**64 / 1000).
        self.generators = {
            name: torch.Generator().manual_seed((seed * 1000 + i) % 2**64)
            for i, name in enumerate(GENERATORS)
        }
        self.step = 0
        self.bad_steps = 0
        self.checkpoint: Path | None = None
        self.loop_state: dict[str, Any] = {}
        for note in self.folder.notes if self.folder is not None else []:
            self.note(f"[yellow]note:[/] {escape(note)}", always=True)
        self._resume_from(resume)
        check_routes(
            self.ctx,
            self.router.routes,
            self.student,
            self.sigmas,
            precision_context(spec.run.precision, acc.device),
        )

    @property
    def routes(self) -> list[Route]:
        """The routes the router picks from, in graph order."""
        return list(self.router.routes)

    def field_name(self, route: str) -> str | None:
        """The graph's name of the field that supervises ``route`` (None for a data-only route)."""
        node = self.graph.spec.routes[route].field
        return None if node is None else str(node)

    def note(self, message: str, always: bool = False) -> None:
        """Print on the main process; warnings (``always``) also print when progress output is off."""
        if self.accelerator.is_main_process and (self.show_progress or always):
            from rich.console import Console

            Console(stderr=True).print(message)

    def release(self) -> None:
        """Free the run folder (the run is over, however it ended)."""
        if self.folder is not None:
            self.folder.release()

    # -- state a checkpoint keeps -----------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Tensor]:
        state = {name: g.get_state() for name, g in self.generators.items()}
        state["torch"] = torch.get_rng_state()
        return state

    def _state(self, loop_state: dict[str, Any]) -> TrainState:
        scalars = {
            "bad_steps": self.bad_steps,
            "processes": self.accelerator.num_processes,
            "lr_schedule": self.lr_schedule.state_dict(),
            "loop": loop_state,
        }
        if isinstance(self.router, HasCheckpointState):
            scalars["router"] = self.router.checkpoint_state()
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
            self.note(f"[yellow]skipping a bad checkpoint:[/] {escape(reason.message)}", always=True)
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
            self.note(
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
        self.step = state.step
        self.bad_steps = int(state.scalars.get("bad_steps", 0))
        loop = state.scalars.get("loop")
        self.loop_state = loop if isinstance(loop, dict) else {}
        router = state.scalars.get("router")
        if isinstance(self.router, HasCheckpointState) and isinstance(router, dict):
            self.router.load_checkpoint_state(router)
        self.checkpoint = path
        self._trim_metrics(state.step)
        self.note(f"resumed from {escape(str(path))} at step {state.step}")

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
                self.note(f"[yellow]note:[/] {escape(note)}", always=True)

    def save(self, loop_state: dict[str, Any]) -> Path | None:
        """Write a checkpoint of the current state and ``loop_state`` (JSON: what the loop and its callbacks
        keep), atomically, keeping the newest ``run.keep_last``; a collective. Returns its path (None
        without a run folder)."""
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
                save_sharded_checkpoint(acc, root, self._state(loop_state), shards, self.run_spec.keep_last)
            elif acc.is_main_process:
                save_checkpoint(root, self._state(loop_state), self.run_spec.keep_last)
        acc.wait_for_everyone()
        self.checkpoint = checkpoint_path(root, self.step)
        return self.checkpoint

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


def export_model(student: nn.Module, ema: EMA | None = None) -> nn.Module:
    """A plain copy of the student for export: EMA weights applied, LoRA adapters merged and removed."""
    model = copy.deepcopy(student)
    if ema is not None:
        ema.copy_to(model)
    return merge_and_strip(model).eval()
