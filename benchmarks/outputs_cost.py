"""What a run's outputs cost: the side-by-side benchmark's fieldkit run, its outputs left out in turn.

    python benchmarks/outputs_cost.py [--rounds 3] [--steps 30] [--threads 1] [--work DIR]

The run is ``release_side_by_side.py``'s (the tiny SD3 pipeline, fp32, batch 1, LoRA rank 4, 16-step
rollouts, ``--steps`` updates), trained by ``Engine.run`` in a fresh process per variant, each dropping more
of the callbacks that run after the last step (``fieldkit.distill.outputs.default_callbacks`` by name):

- ``all``: every output (the sample grid, the checkpoint, the export, results and ``report.html``);
- ``-report``: no report;
- ``-report -samples``: no report, no sample grid;
- ``-report -samples -checkpoints -export``: neither, nor the checkpoint and the export: training alone.

A warm-up run first fills the prompt-embedding cache, so that no variant encodes prompts. Printed: each
variant's peak resident set (the process's ``ru_maxrss``: the peak only grows, hence a process per variant),
median over the rounds with min-max, and its difference to ``all``. A peak in bytes does not depend on the
machine's load, so a few rounds suffice; the rounds interleave the variants. Then, from the runs with
every output, the seconds each callback spends after the last step (``on_run_end``), median over the rounds:
the time between a run's last step and its exit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

VARIANTS = {
    "all": (),
    "-report": ("report",),
    "-report -samples": ("report", "samples"),
    "-report -samples -checkpoints -export": ("report", "samples", "checkpoints", "export"),
}


def child(variant: str, graph: Path, out: Path) -> None:
    """Train the graph without ``VARIANTS[variant]``'s callbacks; print this process's peak RSS and each
    callback's seconds in ``on_run_end`` (JSON)."""
    import resource
    import time

    from fieldkit import load_graph
    from fieldkit.distill.engine import Engine
    from fieldkit.distill.outputs import default_callbacks

    ends: dict[str, float] = {}
    callbacks = default_callbacks(**dict.fromkeys(VARIANTS[variant]))
    for cb in callbacks:

        def timed(run: Any, end: Any = cb.on_run_end, name: str = type(cb).__name__) -> None:
            start = time.perf_counter()
            end(run)
            ends[name] = time.perf_counter() - start

        cb.on_run_end = timed  # type: ignore[method-assign]
    engine = Engine(load_graph(graph), out, show_progress=False)
    for _ in engine.steps(callbacks):
        pass
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"variant": variant, "peak_mib": peak_kib / 1024, "end_seconds": ends}))


def measure(variant: str, graph: Path, out: Path, threads: int) -> dict[str, Any]:
    """One variant's run in a fresh process: what :func:`child` printed."""
    from release_side_by_side import fieldkit_env

    cmd = [sys.executable, __file__, f"--child={variant}", "--graph", str(graph), "--out", str(out)]
    env = {**os.environ, **fieldkit_env(threads)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"the {variant!r} run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3, help="runs of each variant (interleaved)")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    p.add_argument("--t5-tokens", type=int, default=256, help="T5 tokens of the prompt (SD3's default 256)")
    p.add_argument(
        "--work", type=Path, default=None, help="folder for the pipeline and runs (default: temporary)"
    )
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--graph", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.graph, args.out)
        return
    if args.rounds < 1 or args.steps < 1 or args.threads < 1:
        sys.exit("need --rounds, --steps and --threads of at least 1")
    from release_side_by_side import add_tiny_vae, fieldkit_graph
    from sd3 import make_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        root = (args.work or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "sd3" / "vae").is_dir():
            add_tiny_vae(make_pipeline(root))
        graph = root / "graph.yaml"
        graph.write_text(yaml.safe_dump(fieldkit_graph(root, args.steps, args.t5_tokens)))
        runs = Path(tempfile.mkdtemp(prefix="runs-", dir=root))  # this invocation's run folders
        measure("all", graph, runs / "warm-up", args.threads)  # fills the prompt-embedding cache
        peaks: dict[str, list[float]] = {v: [] for v in VARIANTS}
        ends: dict[str, list[float]] = {}
        for i in range(args.rounds):
            for n, variant in enumerate(VARIANTS):
                got = measure(variant, graph, runs / f"run-{i}-{n}", args.threads)
                peaks[variant].append(got["peak_mib"])
                if variant == "all":
                    for name, seconds in got["end_seconds"].items():
                        ends.setdefault(name, []).append(seconds)
                print(f"round {i + 1} {variant}: {peaks[variant][-1]:.1f} MiB", flush=True)
    base = statistics.median(peaks["all"])
    print(f"\npeak RSS, {args.steps} steps, {args.threads} thread(s), median of {args.rounds} round(s):\n")
    print("| outputs | peak RSS MiB, median (min-max) | against all |")
    print("|---|---|---|")
    for variant, values in peaks.items():
        med = statistics.median(values)
        print(f"| {variant} | {med:.1f} ({min(values):.1f}-{max(values):.1f}) | {med - base:+.1f} |")
    print("\nafter the last step, every output on: seconds per callback (on_run_end), median of rounds:\n")
    print("| callback | seconds, median (min-max) |")
    print("|---|---|")
    for name, values in sorted(ends.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"| {name} | {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) |")
    total = [sum(r) for r in zip(*ends.values(), strict=True)]
    print(f"| all | {statistics.median(total):.2f} ({min(total):.2f}-{max(total):.2f}) |")


if __name__ == "__main__":
    main()
