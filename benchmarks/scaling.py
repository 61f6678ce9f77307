"""Scaling: the cost of a DanceOPD step against the rollout length (8 / 16 / 32 Euler steps) and the batch
size, and the throughput of 2 accelerate processes against 1 at the same global batch.

1. In this process: one engine per configuration (the digits student, a guided teacher), their optimizer
   steps timed in interleaved rounds. The rollout costs about ``E[i] = 0.68 N`` forwards per sample, so a
   step's time should grow a little less than linearly in N; per-sample cost should fall with the batch
   until the model's matrix products fill the cores.
2. Data parallelism (``--processes``): the same graph trained by ``accelerate launch --multi_gpu
   --num_processes 2`` (gloo, CPU, one thread each, batch B/2 per process) against one process with B and
   with 1 or 2 threads, each run in its own subprocess, alternated ``--repeats`` times; samples per second
   of the global batch from the median step time of the main process::

    python benchmarks/scaling.py [--quick] [--threads 1] [--processes] [--no-inprocess]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import torch
from common import bench_plugin, graph_text, interleaved, make_engine, median_ms, paired_ratio, parser, setup
from rich.console import Console
from rich.table import Table


def in_process(args, device, console: Console) -> None:
    rounds = 5 if args.quick else 15
    configs = {f"N={n}, B=16": (n, 16) for n in (8, 16, 32)}
    configs.update({f"N=16, B={b}": (16, b) for b in ((4, 64) if args.quick else (4, 32, 64))})
    with bench_plugin():
        engines = {
            name: make_engine(
                graph_text(batch=b, rollout_steps=n, guidance=3.0, device=args.device, bf16=args.bf16)
            )
            for name, (n, b) in configs.items()
        }
    t = interleaved({name: e.update for name, e in engines.items()}, rounds, warmup=1, device=device)
    base = "N=16, B=16"
    table = Table("rollout N", "batch B", "ms / step", "ms / sample", f"/ ({base})")
    for name, (n, b) in configs.items():
        table.add_row(
            str(n),
            str(b),
            f"{median_ms(t[name]):.1f}",
            f"{median_ms(t[name]) / b:.2f}",
            f"{paired_ratio(t[name], t[base]):.2f}x",
        )
    console.print(f"1. step cost, {rounds} interleaved rounds (guided teacher w = 3, K = 1)")
    console.print(table)


# -- multi-process -------------------------------------------------------------------------------------------


def worker(args) -> None:
    """One training process (plain, or one of those ``accelerate launch`` starts): time its steps."""
    torch.set_num_threads(args.threads or 1)
    with bench_plugin():
        engine = make_engine(graph_text(batch=args.batch, guidance=3.0, device="cpu"))
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        engine.update()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    if engine.session.accelerator.is_main_process:
        world = engine.session.accelerator.num_processes
        print(
            json.dumps({"world": world, "threads": torch.get_num_threads(), "step": statistics.median(times)})
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, threads: int, global_batch: int, steps: int, warmup: int) -> dict:
    args = ["--worker", "--batch", str(global_batch // processes), "--threads", str(threads)]
    args += ["--steps", str(steps), "--warmup", str(warmup)]
    if processes == 1:
        cmd = [sys.executable, __file__, *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
        cmd += [str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd += ["--main_process_port", str(free_port()), __file__, *args]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "CUDA_VISIBLE_DEVICES": "",
        "FIELDKIT_LOAD_PLUGINS": "",
    }
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=900)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["samples_per_s"] = global_batch / result["step"]
    return result


def multi_process(args, console: Console) -> None:
    global_batch = 32
    steps, repeats = (6, 1) if args.quick else (15, args.repeats)
    setups = {
        "1 process x 1 thread": (1, 1),
        "1 process x 2 threads": (1, 2),
        "2 processes x 1 thread": (2, 1),
    }
    runs: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(repeats):
        for name, (procs, threads) in setups.items():
            runs[name].append(launch(procs, threads, global_batch, steps, warmup=3)["samples_per_s"])
    base = "1 process x 2 threads"
    table = Table("setup", "batch per process", "samples / s", f"/ {base}")
    for name, (procs, _) in setups.items():
        table.add_row(
            name,
            str(global_batch // procs),
            f"{statistics.median(runs[name]):.1f}",
            f"{statistics.median(runs[name]) / statistics.median(runs[base]):.2f}x",
        )
    console.print(
        f"2. data parallelism: global batch {global_batch}, {steps} timed steps per run, median of {repeats} "
        "alternated runs (DDP over gloo; each run its own subprocess)"
    )
    console.print(table)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--processes", action="store_true", help="also measure 2-process accelerate throughput")
    p.add_argument("--no-inprocess", action="store_true", help="skip the step-cost sweep")
    p.add_argument("--repeats", type=int, default=3, help="alternated runs per multi-process setup")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    device = setup(args)
    console = Console(width=120)
    if not args.no_inprocess:
        in_process(args, device, console)
    if args.processes:
        if device.type != "cpu":
            console.print("2. skipped: the multi-process comparison runs on CPU processes")
        else:
            multi_process(args, console)


if __name__ == "__main__":
    main()
