"""Memory per process of a student under DDP and under FSDP2 (accelerate's FSDP plugin), 2 CPU processes.

``--engine``: through fieldkit's engine (``run.parallel: ddp`` against ``fsdp``): each process trains the
MMDiT student of a graph (DanceOPD on a Gaussian-mixture teacher, ``--steps`` updates) and reports, after
the last update, the bytes of the student's parameters and AdamW state it holds itself, its peak RSS and
the losses.

Without it, a probe of the building block: each process prepares fieldkit's MMDiT and AdamW with
accelerate (DDP, or ``FullyShardedDataParallelPlugin(fsdp_version=2)`` with one shard unit per joint
block), takes ``--steps`` identical optimizer steps on the same batch, and reports the bytes of the
parameters, gradients and optimizer state it holds itself (a DTensor counts its local shard), its peak
RSS, and its losses (equal under DDP and FSDP up to float error). accelerate 1.15 picks FSDP only for GPU
process groups; on a CPU group the probe sets the distributed type itself (marked "CPU override").

    python benchmarks/fsdp_memory.py [--engine] [--hidden 256] [--depth 8] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path


def local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def worker(args: argparse.Namespace) -> None:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import (
        DistributedDataParallelKwargs,
        DistributedType,
        FullyShardedDataParallelPlugin,
    )

    from fieldkit.cond import Cond
    from fieldkit.models import MMDiT, MMDiTConfig

    # MMDiT's text layers go unused on labels alone: DDP must look for unused parameters (as the engine does)
    acc = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    if args.mode == "fsdp":
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["JointBlock"],
            reshard_after_forward=True,
        )
        acc.state.distributed_type = DistributedType.FSDP  # the CPU override (see the docstring)
        acc.state.fsdp_plugin = plugin
    torch.manual_seed(0)
    config = MMDiTConfig(sample_size=(8, 8), hidden=args.hidden, depth=args.depth, heads=4, num_classes=10)
    model = MMDiT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = acc.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(1)
    batch = 8
    x = torch.randn(batch, 1, 8, 8, generator=generator)
    sigma = torch.rand(batch, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    rows = slice(
        acc.process_index * batch // acc.num_processes, (acc.process_index + 1) * batch // acc.num_processes
    )
    losses = []
    for _ in range(args.steps):
        out = model(x[rows], sigma[rows], Cond(label=labels[rows]))
        loss = (out - x[rows]).pow(2).mean()
        acc.backward(loss)
        grads = local_bytes(p.grad for p in model.parameters())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(acc.reduce(loss.detach(), "mean")))
    states = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    report = {
        "mode": args.mode,
        "rank": acc.process_index,
        "world": acc.num_processes,
        "params": sum(p.numel() for p in MMDiT(config).parameters()),
        "param_bytes": local_bytes(model.parameters()),
        "grad_bytes": grads,
        "optimizer_bytes": local_bytes(states),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "losses": losses,
    }
    Path(args.report).with_suffix(f".{acc.process_index}.json").write_text(json.dumps(report))


ENGINE_GRAPH = """
fields:
  teacher: {{type: gaussian_mixture, classes: 10, shape: [1, 8, 8], std: 0.2}}
  init:
    type: fieldkit.mmdit
    config: {{sample_size: [8, 8], hidden: {hidden}, depth: {depth}, heads: 4, num_classes: 10}}
routes:
  t2i: {{field: teacher, data: {{type: gaussian_mixture, classes: 10, shape: [1, 8, 8], std: 0.2}}}}
student: {{init: init}}
flow: {{steps: 8}}
run: {{steps: {steps}, batch_size: 4, lr: 1.0e-4, device: cpu, parallel: {mode}}}
"""


def engine_worker(args: argparse.Namespace) -> None:
    import torch

    from fieldkit import loads_graph
    from fieldkit.distill.callbacks import Callback
    from fieldkit.distill.engine import Engine

    text = ENGINE_GRAPH.format(hidden=args.hidden, depth=args.depth, steps=args.steps, mode=args.mode)
    engine = Engine(loads_graph(text), write=False, show_progress=False)
    sizes: dict[str, int] = {}

    class Held(Callback):
        """What the process holds after an update (gradients are freed by then)."""

        def on_update_end(self, run, report) -> None:  # reads the outer engine's session
            states = [
                v
                for s in engine.session.optimizer.state.values()
                for v in s.values()
                if isinstance(v, torch.Tensor)
            ]
            sizes.update(
                param_bytes=local_bytes(engine.session.student.parameters()),
                optimizer_bytes=local_bytes(states),
            )

    losses = [report.record["loss"] for report in engine.steps([Held()])]
    acc = engine.session.accelerator
    report = {
        "mode": args.mode,
        "rank": acc.process_index,
        "params": sum(p.numel() for p in engine.session.ctx.field("init").parameters()),
        **sizes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "losses": losses,
    }
    Path(args.report).with_suffix(f".{acc.process_index}.json").write_text(json.dumps(report))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(mode: str, args: argparse.Namespace, folder: Path) -> list[dict]:
    report = folder / mode
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--main_process_port", str(free_port()), __file__, "--worker", "--mode", mode]
    cmd += ["--report", str(report), "--hidden", str(args.hidden), "--depth", str(args.depth)]
    cmd += ["--steps", str(args.steps)] + (["--engine"] if args.engine else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "FIELDKIT_LOAD_PLUGINS": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{mode} failed:\n{done.stderr[-4000:]}")
    return [json.loads(report.with_suffix(f".{r}.json").read_text()) for r in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--engine", action="store_true", help="through the engine (run.parallel)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        engine_worker(args) if args.engine else worker(args)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = {mode: launch(mode, args, Path(tmp)) for mode in ("ddp", "fsdp")}
    ddp, fsdp = results["ddp"], results["fsdp"]
    print(f"MMDiT hidden {args.hidden}, depth {args.depth}: {ddp[0]['params']:,} parameters, 2 CPU processes")
    # The engine frees gradients after each update, so its table has no gradient column.
    keys = (
        ("param_bytes", "optimizer_bytes")
        if args.engine
        else ("param_bytes", "grad_bytes", "optimizer_bytes")
    )
    grads = "" if args.engine else " gradients (MB) |"
    print(f"| setup | rank | parameters (MB) |{grads} AdamW state (MB) | peak RSS (MB) |")
    print("|---" * (len(keys) + 3) + "|")
    for mode, rows in results.items():
        if args.engine:
            label = f"engine, run.parallel: {mode}"
        else:
            label = "DDP" if mode == "ddp" else "FSDP2 (accelerate plugin, CPU override)"
        for r in rows:
            cells = " | ".join(f"{r[k] / 2**20:.2f}" for k in keys)
            print(f"| {label} | {r['rank']} | {cells} | {r['peak_rss_mb']:.0f} |")
    gap = max(abs(a - b) / abs(a) for a, b in zip(ddp[0]["losses"], fsdp[0]["losses"], strict=True))
    print(f"losses DDP {ddp[0]['losses']}\nlosses FSDP {fsdp[0]['losses']}\nlargest relative gap {gap:.2e}")


if __name__ == "__main__":
    main()
