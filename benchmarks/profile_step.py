"""Where a DanceOPD step's time goes: a profiled ``fieldkit distill`` loop on the digits student and the
tiny SD3 student.

The engine runs its own loop (``Engine.steps``) with the run logger that ``fieldkit distill`` uses (it
writes ``metrics.jsonl`` into a temporary run folder; no progress bar). The script only observes: forward
hooks time every student forward (without gradients: the rollout; with: the training forward) and every
teacher forward; wrappers time the data bucket's ``sample``, ``Tensor.backward``, gradient clipping, the
optimizer's ``step`` and ``zero_grad``, and the logger's per-step hook. What the step's wall-clock time holds
beyond those is the engine's own work: query indices, the rollout's bookkeeping, merging a LoRA student
for the rollout, the loss, the log record, Python and the dispatch of those ops. Printed per student: the
median ms per step of each part and its share of the step (``--steps`` steps after ``--warmup``), then a
``torch.profiler`` table of the ops with the most self CPU time over ``--profile-steps`` steps, with the
share of the profiled wall time spent inside ops (the rest is Python and dispatch), and, when
``pyinstrument`` is installed, its sampled call tree of the same steps::

    python benchmarks/profile_step.py [--threads 1] [--steps 30] [--students digits,sd3]

The digits student as in ``engine_overhead.py`` (batch 16, teacher guided at w = 3); the tiny SD3 student as
in ``sd3.py`` (LoRA r = 4, batch 1, 77 + 256 text tokens). 16-step rollouts, K = 1, fp32.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from common import bench_plugin, graph_text, make_engine, parser, setup

from fieldkit.distill.engine import Engine
from fieldkit.distill.outputs import RunLogger
from fieldkit.testing import quiet_diffusers

PARTS = (
    "data: sample the batch",
    "rollout: student forwards, no grad",
    "teacher forward",
    "student forward (grad)",
    "student backward",
    "clip gradients",
    "optimizer step + zero_grad",
    "logging (run logger)",
)


class Clock:
    """Seconds per named part, accumulated for the current step."""

    def __init__(self) -> None:
        self.now: dict[str, float] = defaultdict(float)

    def wrap(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.now[part] += time.perf_counter() - start

        return timed

    def hook(self, module: torch.nn.Module, part: Callable[[], str]) -> None:
        """Time each forward of ``module`` into ``part()`` (read when the forward starts)."""
        started: list[tuple[str, float]] = []
        module.register_forward_pre_hook(lambda m, a: started.append((part(), time.perf_counter())))

        def post(m: Any, a: Any, out: Any) -> None:
            name, start = started.pop()
            self.now[name] += time.perf_counter() - start

        module.register_forward_hook(post)

    def take(self) -> dict[str, float]:
        now, self.now = dict(self.now), defaultdict(float)
        return now


@contextlib.contextmanager
def patched(obj: Any, name: str, clock: Clock, part: str) -> Iterator[None]:
    original = getattr(obj, name)
    setattr(obj, name, clock.wrap(part, original))
    try:
        yield
    finally:
        setattr(obj, name, original)


def instrument(engine: Engine, clock: Clock, logger: RunLogger) -> contextlib.ExitStack:
    """Hooks and wrappers that time the parts of ``engine``'s steps (undone when the stack closes)."""
    clock.hook(
        engine.session.student,
        lambda: "student forward (grad)" if torch.is_grad_enabled() else "rollout: student forwards, no grad",
    )
    clock.hook(engine.session.ctx.field("teacher"), lambda: "teacher forward")
    stack = contextlib.ExitStack()
    for route in engine.session.router.routes:
        stack.enter_context(patched(route.data, "sample", clock, "data: sample the batch"))
    stack.enter_context(patched(torch.Tensor, "backward", clock, "student backward"))
    stack.enter_context(patched(engine.session.accelerator, "clip_grad_norm_", clock, "clip gradients"))
    stack.enter_context(patched(engine.session.optimizer, "step", clock, "optimizer step + zero_grad"))
    stack.enter_context(patched(engine.session.optimizer, "zero_grad", clock, "optimizer step + zero_grad"))
    stack.enter_context(patched(logger, "on_update_end", clock, "logging (run logger)"))
    return stack


def breakdown(engine: Engine, warmup: int, steps: int) -> tuple[list[dict[str, float]], list[float]]:
    """Each measured step's seconds per part, and its wall-clock seconds (update and callbacks)."""
    clock, logger = Clock(), RunLogger()
    parts, walls = [], []
    with instrument(engine, clock, logger):
        loop = engine.steps([logger])
        for i in range(warmup + steps):
            start = time.perf_counter()
            next(loop)
            wall = time.perf_counter() - start
            now = clock.take()
            if i >= warmup:
                parts.append(now)
                walls.append(wall)
        loop.close()
    return parts, walls


def report(label: str, parts: list[dict[str, float]], walls: list[float]) -> None:
    step = statistics.median(walls)
    print(f"\n{label}: median step {1e3 * step:.1f} ms over {len(walls)} steps\n")
    print("| part | ms / step (median) | share of the step |\n|---|---|---|")
    medians = {part: statistics.median(p.get(part, 0.0) for p in parts) for part in PARTS}
    for part, value in medians.items():
        print(f"| {part} | {1e3 * value:.2f} | {value / step:.1%} |")
    rest = [w - sum(p.values()) for p, w in zip(parts, walls, strict=True)]
    other = statistics.median(rest)
    print(
        f"| the engine's own work: queries, rollout bookkeeping, loss, record, Python | {1e3 * other:.2f} | "
        f"{other / step:.1%} |"
    )


def op_profile(engine: Engine, steps: int) -> None:
    """``torch.profiler`` over ``steps`` steps: the ops with the most self CPU time, and the share of the
    wall time inside ops; then pyinstrument's sampled tree if it is installed."""
    from torch.profiler import ProfilerActivity, profile

    loop = engine.steps([])
    start, cpu = time.perf_counter(), time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            next(loop)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    events = prof.key_averages()
    in_ops = sum(e.self_cpu_time_total for e in events) / 1e6
    print(
        f"\ntorch.profiler, {steps} steps: {in_ops / wall:.0%} of the profiled wall time is inside ops "
        f"({1e3 * in_ops / steps:.1f} ms / step of {1e3 * wall / steps:.1f} ms wall, "
        f"{1e3 * cpu / steps:.1f} ms CPU; the profiler's own cost included); the rest is Python and "
        "dispatch. Top ops by self time:\n"
    )
    print("| op | calls / step | self CPU ms / step | share of self CPU |\n|---|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        share = e.self_cpu_time_total / 1e6 / in_ops
        print(
            f"| `{e.key}` | {e.count / steps:.1f} | {e.self_cpu_time_total / 1e3 / steps:.2f} | {share:.1%} |"
        )
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("\n(pyinstrument is not installed: no sampled call tree)")
        loop.close()
        return
    sampler = Profiler(interval=0.001)
    with sampler:
        for _ in range(steps):
            next(loop)
    loop.close()
    print("\n" + sampler.output_text(unicode=False, color=False, short_mode=True))


def engines(names: list[str], root: Path, total: int) -> Iterator[tuple[str, Engine]]:
    for name in names:
        if name == "digits":
            text = graph_text(steps=total, batch=16, guidance=3.0)
            yield (
                "digits student, full, batch 16, guided teacher (w = 3)",
                make_engine(text, out=root / f"run-{name}"),
            )
        elif name == "sd3":
            from sd3 import graph_text as sd3_graph
            from sd3 import make_pipeline, sd3_plugin

            quiet_diffusers()
            sd3_plugin()
            make_pipeline(root)
            text = sd3_graph(root, 256)
            engine = make_engine(text, [f"run.steps={total}"], out=root / f"run-{name}")
            yield "tiny SD3 student, LoRA r = 4, batch 1", engine
        else:
            raise SystemExit(f"error: unknown student {name!r}; choose from digits, sd3")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 30; 8 with --quick)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--profile-steps", type=int, default=5, help="steps under torch.profiler")
    p.add_argument("--students", default="digits,sd3", help="which students, comma-separated")
    args = p.parse_args()
    steps = args.steps or (8 if args.quick else 30)
    setup(args, f"{steps} steps after {args.warmup}")
    total = args.warmup + steps + 2 * args.profile_steps
    with tempfile.TemporaryDirectory() as tmp, bench_plugin():
        for label, engine in engines(args.students.split(","), Path(tmp), total):
            parts, walls = breakdown(engine, args.warmup, steps)
            report(label, parts, walls)
            op_profile(engine, args.profile_steps)


if __name__ == "__main__":
    main()
