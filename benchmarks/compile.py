"""``run.compile``: eager against compiled DanceOPD steps, the compile time and the break-even step count;
and a DanceOPD step against a joint-SFT step of the same student on the same shapes.

1. ``compile``: for the digits student (batch 32, guided teacher w = 3, as the main job's batch) and the
   tiny SD3 student (LoRA r = 4, batch 1; ``sd3.py``'s pipeline), each variant of ``fieldkit.compile``:
   regional (per block) or whole-model, the shrinking rollout batch as one dynamic graph or padded into
   buckets, and regional with the passes without gradients alone compiled (rollout and teacher). Each
   variant runs in a fresh process with an empty inductor cache (what a run pays): its compile time is
   the seconds its first steps took beyond as many eager steps, then its steps and eager ones alternate in
   interleaved rounds (a ratio is the median per-round eager / variant ratio, with its quartiles).
   Break-even: compile time / time saved per step.
2. ``rollout``: the digits student's early-stopped rollout alone, eager against each variant (on a GPU:
   CUDA graphs against eager, where the small student is launch-bound).
3. ``sft``: one DanceOPD step (16-step early-stopped rollout, teacher query, one forward + backward) against
   one joint-SFT step (one forward + backward on data) of the same student, batch and shapes, eager, with
   the model passes each makes (rows, counted by forward hooks). The ratio is the method's intrinsic cost::

    python benchmarks/compile.py [--quick] [--threads 1] [--models digits,sd3] [--parts compile,rollout,sft]
    python benchmarks/compile.py --device cuda --bf16 --parts rollout --variants cudagraphs  # gpu.sh
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from common import (
    SHAPE,
    PassLog,
    TextBucket,
    autocast,
    bench_plugin,
    clock,
    graph_text,
    interleaved,
    make_engine,
    median_ms,
    paired_ratio,
    parser,
    setup,
)
from rich.console import Console
from rich.table import Table

from fieldkit.compile import compile_fields
from fieldkit.data import Batch
from fieldkit.distill.engine import Engine
from fieldkit.distill.queries import sample_indices
from fieldkit.flow import rollout_states
from fieldkit.plugins import Params, get_host, hookimpl

#: name -> (torch.compile mode, regional, batch policy, compile the passes with gradients too)
VARIANTS: dict[str, tuple[str, bool, str, bool]] = {
    "regional-dynamic": ("default", True, "dynamic", True),
    "regional-dynamic-nograd": ("default", True, "dynamic", False),
    "regional-buckets": ("default", True, "buckets", True),
    "whole-dynamic": ("default", False, "dynamic", True),
    "cudagraphs": ("reduce-overhead", True, "buckets", True),
}
CPU_VARIANTS = [v for v in VARIANTS if v != "cudagraphs"]
DIGITS_BATCH = 32


# -- the engines ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def world(model: str, root: Path) -> Iterator[Callable[[], Engine]]:
    """A factory of fresh engines (eager) for ``model``: ``digits`` or ``sd3``."""
    if model == "digits":
        with bench_plugin():
            text = graph_text(batch=DIGITS_BATCH, guidance=3.0, device=ARGS.device, bf16=ARGS.bf16)
            yield lambda: make_engine(text)
        return
    import sd3

    sd3.sd3_plugin()
    if not (root / "sd3").exists():
        sd3.make_pipeline(root)
    yield lambda: sd3.make_engine(root, 256, torch.device(ARGS.device), ARGS.bf16)


def teachers(engine: Engine) -> list[Any]:
    return [route.field for route in engine.session.router.routes if route.field is not None]


def compiled(engine: Engine, variant: str) -> Engine:
    """``engine`` with its student and teachers compiled as ``variant`` says (``eager``: as it is)."""
    if variant != "eager":
        mode, regional, batch, grad = VARIANTS[variant]
        compile_fields(
            [engine.session.student, *teachers(engine)], mode, regional=regional, batch=batch, grad=grad
        )
    return engine


def graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def warm(engine: Engine, limit: int) -> list[float]:
    """Seconds of each step until three steps in a row trace no new graph (at most ``limit`` steps)."""
    times: list[float] = []
    quiet = 0
    while quiet < 3 and len(times) < limit:
        before = graphs()
        start = time.perf_counter()
        engine.update()
        times.append(time.perf_counter() - start)
        quiet = quiet + 1 if graphs() == before else 0
    return times


# -- part 1: compile --------------------------------------------------------------------------------------


def child(model: str, variant: str, root: Path) -> None:
    """(In a fresh process.) Eager against ``variant``: the compiled engine's warm-up steps, then both
    engines' steps in interleaved rounds; JSON on stdout. A round in which the variant still traced a graph
    (a batch size first seen then, such as a rollout's lone last row) is left out of the ratios and its
    extra seconds counted as compile time."""
    rounds = 6 if ARGS.quick else ARGS.rounds
    with world(model, root) as make:
        eager, engine = make(), compiled(make(), variant)
        eager_warm = [clock(eager.update, ARGS.device) for _ in range(4)]
        warmup = warm(engine, 40)
        t: dict[str, list[float]] = {"eager": [], "variant": []}
        late = 0.0
        for _ in range(rounds):
            before = graphs()
            pair = clock(eager.update, ARGS.device), clock(engine.update, ARGS.device)
            if graphs() != before:
                late += pair[1] - pair[0]
                continue
            t["eager"].append(pair[0])
            t["variant"].append(pair[1])
    traced = warmup[:-3]  # the warm-up steps that traced graphs (the last three traced none)
    seconds = sum(traced) - len(traced) * statistics.median(eager_warm[1:]) + late
    print(json.dumps({**t, "compile_s": seconds, "traced": len(traced), "late": late}))


def run_child(model: str, variant: str, root: Path) -> dict[str, Any]:
    """:func:`child` in a fresh process with an empty inductor cache (what a run pays to compile)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        command = [sys.executable, __file__, "--child", model, variant, str(root), "--device", ARGS.device]
        command += ["--threads", str(torch.get_num_threads()), "--rounds", str(ARGS.rounds)]
        command += (["--bf16"] if ARGS.bf16 else []) + (["--quick"] if ARGS.quick else [])
        out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def part_compile(model: str, variants: list[str], root: Path, console: Console) -> None:
    """One fresh process per variant; the step ratio is measured against eager in that process."""
    with world(model, root):  # makes the SD3 pipeline once, for every child
        pass
    table = Table(
        "variant", "eager ms", "variant ms", "eager / variant (IQR)", "rounds", "compile s", "break-even"
    )
    for v in variants:
        r = run_child(model, v, root)
        if "error" in r:
            table.add_row(v, "-", "-", "-", "-", r["error"][:60], "-")
            continue
        ratios = sorted(a / b for a, b in zip(r["eager"], r["variant"], strict=True))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        seconds, saved = r["compile_s"], statistics.median(r["eager"]) - statistics.median(r["variant"])
        row = (
            v,
            f"{median_ms(r['eager']):.1f}",
            f"{median_ms(r['variant']):.1f}",
            f"{paired_ratio(r['eager'], r['variant']):.3f} ({q[0]:.2f}-{q[2]:.2f})",
            str(len(r["eager"])),
            f"{seconds:.1f}",
            f"{seconds / saved:.0f}" if saved > 0 else "never",
        )
        print(" | ".join(row), flush=True)  # each variant as it finishes (a variant takes minutes)
        table.add_row(*row)
    rounds = 6 if ARGS.quick else ARGS.rounds
    console.print(
        f"{model}: each variant in a fresh process (empty inductor cache) against eager, {rounds} rounds "
        "(rounds that traced a graph are left out); compile s: its steps that traced, beyond eager steps"
    )
    console.print(table)


# -- part 2: the rollout alone ------------------------------------------------------------------------------


def part_rollout(variants: list[str], console: Console) -> None:
    """The digits student's early-stopped rollout (no grad; the same Beta(5, 2) plan for every variant in a
    round), eager against compiled: on a GPU, where the small student is launch-bound, CUDA graphs' case."""
    rounds = 6 if ARGS.quick else ARGS.rounds
    with world("digits", Path()) as make:
        engines = {"eager": make(), **{v: compiled(make(), v) for v in variants}}
        for v in variants:
            warm(engines[v], 40)
    batch = (
        engines["eager"].session.router.routes[0].data.sample(DIGITS_BATCH, torch.Generator().manual_seed(0))
    )
    cond, sigmas = (
        batch.cond.to(ARGS.device),
        engines["eager"].session.sigmas[engines["eager"].session.routes[0].name],
    )
    noise = torch.randn((DIGITS_BATCH, *SHAPE), device=ARGS.device)
    gen = torch.Generator().manual_seed(1)
    plans = [sample_indices(sigmas.numel() - 1, DIGITS_BATCH, 1, "low", gen) for _ in range(rounds + 2)]
    amp = autocast(ARGS, torch.device(ARGS.device))

    def rollout(engine: Engine, plan: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode(), amp():
                rollout_states(engine.session.student, noise, cond, sigmas, plan)

        return run

    times: dict[str, list[float]] = {name: [] for name in engines}
    for plan in plans:  # a round: every variant rolls the same plan out, in turn
        for name, engine in engines.items():
            times[name].append(clock(rollout(engine, plan), ARGS.device))
    t = {name: v[2:] for name, v in times.items()}  # two warm-up rounds
    table = Table("variant", "rollout ms", "eager / variant")
    for name in engines:
        table.add_row(name, f"{median_ms(t[name]):.1f}", f"{paired_ratio(t['eager'], t[name]):.2f}")
    console.print(
        f"digits rollout, batch {DIGITS_BATCH}, 16 steps, Beta(5, 2) plan, {rounds} interleaved rounds"
    )
    console.print(table)


# -- part 3: DanceOPD against joint SFT ------------------------------------------------------------------


class DataBucket(TextBucket):
    """The benchmark conditions with clean target canvases (what SFT trains on)."""

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        cond = super().sample(batch_size, generator).cond
        return Batch(cond, torch.randn((batch_size, *self.shape), generator=generator))


class DataPlugin:
    @hookimpl
    def fieldkit_register_datasets(self, register):
        register("bench.data", lambda p, ctx: DataBucket(), Params)


def part_sft(console: Console) -> None:
    """DanceOPD / joint SFT step time on the digits student, with the passes each makes."""
    rounds = 6 if ARGS.quick else ARGS.rounds
    get_host().register(DataPlugin(), "bench-data")
    with bench_plugin():
        engines = {}
        for name, method in (("danceopd", "{type: danceopd, query: low, k: 1}"), ("sft", "{type: sft}")):
            text = graph_text(batch=DIGITS_BATCH, method=method, device=ARGS.device, bf16=ARGS.bf16)
            engines[name] = make_engine(text.replace("bench.text", "bench.data"))
    logs = {
        n: PassLog({"student": e.session.student, "teacher": e.session.ctx.field("teacher")})
        for n, e in engines.items()
    }
    t = interleaved({n: (lambda e=e: e.update()) for n, e in engines.items()}, rounds, device=ARGS.device)
    table = Table(
        "method", "ms / step", "rollout rows", "teacher rows", "grad rows", "row passes", "/ sft (IQR)"
    )
    for name, log in logs.items():
        calls = log.take()
        steps = rounds + 2  # two warm-up steps, then the rounds
        no_grad = sum(n for who, n, grad in calls if who == "student" and not grad) / steps
        teacher = sum(n for who, n, _ in calls if who == "teacher") / steps
        grad = sum(n for _, n, g in calls if g) / steps
        q = statistics.quantiles(sorted(a / b for a, b in zip(t[name], t["sft"], strict=True)), n=4)
        ratio = f"{paired_ratio(t[name], t['sft']):.2f}x ({q[0]:.2f}-{q[2]:.2f})"
        table.add_row(
            name,
            f"{median_ms(t[name]):.1f}",
            f"{no_grad:.1f}",
            f"{teacher:.1f}",
            f"{grad:.1f}",
            f"{no_grad + teacher + 3 * grad:.0f}",
            ratio,
        )
    console.print(
        f"digits student, batch {DIGITS_BATCH}, {rounds} interleaved rounds; rows per step (mean); row"
        " passes: forward rows, a row with gradients counted 3 (forward + backward)"
    )
    console.print(table)


ARGS: Any = None


def main() -> None:
    global ARGS
    p = parser(__doc__)
    p.add_argument("--models", default="digits,sd3")
    p.add_argument("--parts", default="compile,sft")
    p.add_argument("--variants", default=",".join(CPU_VARIANTS), help=f"of: {', '.join(VARIANTS)}")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--child", nargs=3, help=argparse_hidden())
    ARGS = p.parse_args()
    if ARGS.child:
        if ARGS.threads:
            torch.set_num_threads(ARGS.threads)
        child(ARGS.child[0], ARGS.child[1], Path(ARGS.child[2]))
        return
    setup(ARGS, "run.compile: eager against compiled steps")
    console = Console(width=140)
    variants = [v.strip() for v in ARGS.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    parts = ARGS.parts.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        if "compile" in parts:
            for model in ARGS.models.split(","):
                part_compile(model, variants, Path(tmp), console)
        if "rollout" in parts:
            part_rollout(variants, console)
        if "sft" in parts:
            part_sft(console)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
