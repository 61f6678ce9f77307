"""Engine overhead: a DanceOPD optimizer step against the bare model passes it performs.

One process, one model the size of the digits student (fieldkit's MMDiT, 1 x 8 x 16 canvases, 16 text
tokens of 384 dims, batch 16): the engine runs ``--steps`` updates. Forward hooks record every pass each
step makes (the rollout's no-grad student forwards with their batch sizes, one teacher forward — two
stacked for guidance — and one student forward + backward); the same passes are then replayed bare,
interleaved with the engine steps so machine noise hits both alike. Prints ``engine / bare`` (1.00 = no
overhead; the target is <= 1.10) from the medians, the totals and the median of the per-step ratios::

    python benchmarks/engine_overhead.py [--steps 60] [--batch 16] [--guidance 3.0] [--quick] [--threads 1]

Everything the engine does besides those passes counts as overhead: drawing the batch and the noise, the
query indices, the rollout's bookkeeping, the guidance operator, the loss, clipping and the optimizer step.
The SD3 student's overhead is measured by ``benchmarks/sd3.py``.
"""

from __future__ import annotations

import statistics

import torch
from common import (
    SHAPE,
    PassLog,
    bench_plugin,
    clock,
    engine_autocast,
    graph_text,
    make_engine,
    paired_ratio,
    parser,
    replay,
    setup,
    text_cond,
)

from fieldkit.models.lora import merged_lora


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 60; 15 with --quick)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()
    steps = args.steps or (15 if args.quick else 60)
    device = setup(args, f"batch {args.batch}, guidance w={args.guidance}, {steps} steps")

    with bench_plugin():
        text = graph_text(
            steps=steps + args.warmup,
            batch=args.batch,
            guidance=args.guidance,
            device=args.device,
            bf16=args.bf16,
        )
        engine = make_engine(text)
    teacher = engine.session.ctx.field("teacher")
    models = {"student": engine.session.student, "teacher": teacher}
    passes = PassLog(models)
    cond = text_cond(2 * args.batch).to(device)

    def rollout():  # the engine's rollout context (a no-op for this full student)
        return merged_lora(engine.session.student)

    def inputs(n: int):
        return (
            torch.randn((n, *SHAPE), device=device),
            torch.full((n,), 0.5, device=device),
            cond.index(slice(0, n)),
        )

    engine_times, bare_times, nfes, samples = [], [], [], []
    for i in range(args.warmup + steps):
        record: dict = {}
        seconds = clock(lambda: record.update(engine.update().record(0)), device)  # noqa: B023
        bare = replay(models, passes.take(), inputs, engine_autocast(engine), device, rollout=rollout)
        passes.resume()
        if i >= args.warmup:
            engine_times.append(seconds)
            bare_times.append(bare)
            nfes.append(record["rollout_nfe"])
            samples.append(record["rollout_samples"] / args.batch)

    print(f"mean rollout NFE {statistics.mean(nfes):.2f} of 16 (sequential: the batch's last query)")
    print(f"rollout forwards per sample {statistics.mean(samples):.2f} (a sample leaves at its last query)")
    for name, times in (("engine step", engine_times), ("bare passes", bare_times)):
        mean, median = 1e3 * sum(times) / len(times), 1e3 * statistics.median(times)
        print(f"{name}  {mean:8.2f} ms (median {median:.2f})")
    median_ratio = statistics.median(engine_times) / statistics.median(bare_times)
    totals_ratio = sum(engine_times) / sum(bare_times)
    paired = paired_ratio(engine_times, bare_times)
    print(
        f"engine / bare = {median_ratio:.3f} (medians), {totals_ratio:.3f} (totals), "
        f"{paired:.3f} (median per-step ratio)   (target <= 1.10)"
    )


if __name__ == "__main__":
    main()
