"""Guidance batching: a guided query against an unguided one of the same batch.

``guidance(teacher, w)`` evaluates the conditional and the unconditional field in ONE forward of the
stacked batch (2B rows). Two measurements, each timed in interleaved rounds in this one process:

1. the field call alone, at several batch sizes: ``guided`` (one 2B forward) and ``two calls`` (a B forward
   with the condition, another without) over ``unguided`` (one B forward);
2. the whole query: a DanceOPD optimizer step whose target is ``guidance(teacher, 3)`` over the same step
   with the plain teacher (same seeds, so the same query indices, rollout and batch) — what guidance adds
   to the cost of a distillation query (target <= 1.15).

Batching pays where a forward is bound by per-call overhead (small batches, a GPU far from full); where the
arithmetic dominates (a CPU at batch 16), a 2B forward costs about two B forwards and the saving is what
two calls would spend twice: dispatch, the shared conditioning, the weights read twice::

    python benchmarks/guidance.py [--quick] [--threads 1]
"""

from __future__ import annotations

import torch
from common import (
    SHAPE,
    bench_plugin,
    engine_autocast,
    graph_text,
    interleaved,
    make_engine,
    median_ms,
    paired_ratio,
    parser,
    setup,
    text_cond,
)
from rich.console import Console
from rich.table import Table

from fieldkit.ops import Guidance


def field_calls(teacher: torch.nn.Module, batch: int, rounds: int, device: torch.device, autocast) -> dict:
    guided = Guidance(teacher, 3.0)
    cond = text_cond(batch).to(device)
    uncond = cond.uncond()
    x, sigma = torch.randn((batch, *SHAPE), device=device), torch.full((batch,), 0.5, device=device)

    def run(fn):
        def step():
            with torch.inference_mode(), autocast():
                fn()

        return step

    steps = {
        "unguided": run(lambda: teacher(x, sigma, cond)),
        "guided": run(lambda: guided(x, sigma, cond)),
        "two calls": run(lambda: (teacher(x, sigma, cond), teacher(x, sigma, uncond))),
    }
    return interleaved(steps, rounds, warmup=3, device=device)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=16, help="batch of the distillation step")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 40; 12 quick)")
    args = p.parse_args()
    device = setup(args)
    batches = [1, 4, 16] if args.quick else [1, 4, 16, 64]
    rounds = 10 if args.quick else 30
    steps = args.steps or (12 if args.quick else 40)

    with bench_plugin():
        engines = {
            w: make_engine(graph_text(batch=args.batch, guidance=w, device=args.device, bf16=args.bf16))
            for w in (1.0, 3.0)
        }
    # The same teacher weights in both engines (both were built from seed 1 and perturbed alike).
    teacher = engines[3.0].session.ctx.field("teacher")
    autocast = engine_autocast(engines[3.0])

    console = Console(width=120)
    table = Table(
        "batch B", "unguided ms", "guided ms", "two calls ms", "guided / unguided", "two calls / unguided"
    )
    for batch in batches:
        t = field_calls(teacher, batch, rounds, device, autocast)
        table.add_row(
            str(batch),
            f"{median_ms(t['unguided']):.2f}",
            f"{median_ms(t['guided']):.2f}",
            f"{median_ms(t['two calls']):.2f}",
            f"{paired_ratio(t['guided'], t['unguided']):.2f}x",
            f"{paired_ratio(t['two calls'], t['unguided']):.2f}x",
        )
    console.print("1. the teacher query alone (one forward, inference mode)")
    console.print(table)

    t = interleaved({f"w={w:g}": engines[w].update for w in (1.0, 3.0)}, steps, warmup=3, device=device)
    ratio = paired_ratio(t["w=3"], t["w=1"])
    console.print(f"2. a whole DanceOPD query (optimizer step, batch {args.batch}, 16-step rollout, K = 1)")
    console.print(
        f"   unguided target {median_ms(t['w=1']):.1f} ms, guided (w = 3) {median_ms(t['w=3']):.1f} ms: "
        f"guided / unguided = {ratio:.3f} (median per-step ratio; target <= 1.15)"
    )


if __name__ == "__main__":
    main()
