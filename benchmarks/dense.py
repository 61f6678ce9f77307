"""DanceOPD (K = 1, Beta(5, 2) query, early-stopped rollout) against dense supervision (all K = 16 states,
DiffusionOPD-style ``dt^2 / 2`` weights): the measured cost of one optimizer step.

Both methods run in one process on the same student, teacher and batch; their optimizer steps are timed in
interleaved rounds. Besides the time, each method's work in rows pushed through a model: rollout
sample-forwards, teacher rows, and the rows of the one forward + backward with gradients::

    python benchmarks/dense.py [--quick] [--threads 1] [--batch 16]
"""

from __future__ import annotations

import statistics

from common import bench_plugin, graph_text, interleaved, make_engine, median_ms, paired_ratio, parser, setup
from rich.console import Console
from rich.table import Table

METHODS = {
    "danceopd K=1": "{type: danceopd, query: low, k: 1}",
    "danceopd K=4": "{type: danceopd, query: low, k: 4}",
    "dense K=16": "{type: dense}",
}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="timed steps per method (default 20; 6 quick)")
    args = p.parse_args()
    device = setup(args, f"batch {args.batch}, 16-step rollout, unguided teacher")
    steps = args.steps or (6 if args.quick else 20)
    with bench_plugin():
        engines = {
            name: make_engine(graph_text(batch=args.batch, method=method, device=args.device, bf16=args.bf16))
            for name, method in METHODS.items()
        }
    records: dict[str, list[dict]] = {name: [] for name in engines}

    def step(name):
        return lambda: records[name].append(engines[name].update().record(0))

    t = interleaved({name: step(name) for name in engines}, steps, warmup=1, device=device)
    base = "danceopd K=1"
    table = Table("method", "ms / step", "rollout rows", "teacher rows", "grad rows", f"/ {base}")
    for name, times in t.items():
        recs = records[name][-steps:]
        rows = statistics.mean(r["rollout_samples"] for r in recs)
        k = 16 if name.startswith("dense") else int(name.rsplit("=", 1)[1])
        table.add_row(
            name,
            f"{median_ms(times):.1f}",
            f"{rows:.0f}",
            str(k * args.batch),
            str(k * args.batch),
            f"{paired_ratio(times, t[base]):.2f}x",
        )
    console = Console(width=120)
    console.print(f"{steps} interleaved steps per method (medians; ratio: median per-round ratio)")
    console.print(table)


if __name__ == "__main__":
    main()
