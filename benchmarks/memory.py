"""Memory: the peak memory of a distillation step over the bytes of the parameters it holds, and the check
that the rollout keeps no activations (the peak does not grow with the rollout length).

Each configuration runs in its own subprocess. It builds the engine (a frozen teacher and the student),
then measures the memory of its optimizer steps:

- on CPU, there is no allocator peak API: the process's resident-set high-water mark (``VmHWM``) is reset
  to the current RSS at the baseline (``/proc/self/clear_refs``; ``ru_maxrss`` where that is not
  allowed); glibc's malloc runs with fixed mmap / trim thresholds so that freed tensors leave the RSS;
- on CUDA, ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.

One step runs before the baseline is taken (AdamW makes its moments there, and the first step also pays
one-time costs that are not the step's: importing ``torch._dynamo``, ~70 MB); the peak is then
``params + AdamW moments + (high-water mark during the next steps - baseline)``. Beside it: AdamW's
two moments, the student's gradients, and the activations autograd saves for the one forward with
gradients (counted by saved-tensor hooks), which the backward frees as it makes the gradients.
A control configuration runs the same rollout WITH autograd (as if it were differentiated): its peak
grows with the rollout length, which shows the measurement would see kept activations::

    python benchmarks/memory.py [--quick] [--device cuda] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch
from common import (
    DIGITS_MODEL,
    bench_plugin,
    engine_autocast,
    graph_text,
    make_engine,
    param_bytes,
    parser,
    setup,
)
from rich.console import Console
from rich.table import Table

WIDE_MODEL = (
    "{in_channels: 1, sample_size: [8, 16], patch_size: 2, hidden: 256, depth: 8, heads: 4, use_source: true}"
)
MODELS = {"digits": DIGITS_MODEL, "wide": WIDE_MODEL}
MB = 2**20


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(cfg: dict) -> dict:
    """One configuration, measured in this (fresh) process; returns the figures as a dict."""
    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    with bench_plugin():
        engine = make_engine(
            graph_text(
                batch=cfg["batch"],
                rollout_steps=cfg["rollout"],
                model=MODELS[cfg["model"]],
                device=cfg["device"],
                bf16=cfg["bf16"],
                train=cfg["train"],
                init="teacher",
            )
        )
    student, teacher = engine.session.student, engine.session.ctx.field("teacher")
    held = param_bytes(student) + param_bytes(teacher)
    trainable = param_bytes(student, trainable=True)

    def run() -> None:
        if cfg["grad_rollout"]:  # control: the rollout differentiated, its activations kept until backward
            from fieldkit.flow import rollout_states

            n, steps = cfg["batch"], cfg["rollout"]
            batch = (
                engine.session.router.routes[0].data.sample(n, torch.Generator().manual_seed(0)).to(device)
            )
            noise = torch.randn((n, 1, 8, 16), device=device)
            idx = torch.full((n, 1), steps - 1, device=device)
            with engine_autocast(engine)():
                states, _ = rollout_states(
                    student, noise, batch.cond, engine.session.sigmas[engine.session.routes[0].name], idx
                )
            states.float().square().mean().backward()
            student.zero_grad(set_to_none=True)
        else:
            engine.update()

    # One step before the baseline: AdamW's moments are made there (counted below, from the optimizer),
    # and so are one-time costs that are not the step's (the first optimizer step imports torch._dynamo:
    # ~70 MB of Python modules; allocator and kernel caches).
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(cfg["steps"]):
            run()
        torch.cuda.synchronize()
        growth = torch.cuda.max_memory_allocated() - base
        how = "cuda max_memory_allocated"
    else:
        import gc

        gc.collect()
        base = _status("VmRSS")
        how = "VmHWM" if _reset_peak() else "ru_maxrss"
        for _ in range(cfg["steps"]):
            run()
        peak = (
            _status("VmHWM") if how == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        growth = peak - base
    saved = 0 if cfg["grad_rollout"] else saved_activation_bytes(engine)
    opt_state = sum(
        t.numel() * t.element_size()
        for s in engine.session.optimizer.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    return {
        **cfg,
        "held": held,
        "params": sum(p.numel() for p in student.parameters()),
        "trainable": trainable,
        "grads": 0 if cfg["grad_rollout"] else trainable,
        "opt_state": opt_state if not cfg["grad_rollout"] else 0,
        "growth": growth + (0 if cfg["grad_rollout"] else opt_state),  # the moments predate the baseline
        "saved": saved,
        "how": how,
    }


def saved_activation_bytes(engine) -> int:
    """Bytes of the tensors autograd saves for backward during one optimizer step (parameters and
    duplicates excluded): the activations of the one forward with gradients."""
    params = {p.untyped_storage().data_ptr() for p in engine.session.student.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        engine.update()
    return sum(seen.values())


def configurations(args) -> list[dict]:
    base = {"device": args.device, "bf16": args.bf16, "batch": 32, "steps": 3, "train": "full"}
    base["grad_rollout"] = False
    rollouts = (8, 32) if args.quick else (8, 16, 32)
    cfgs = [{**base, "model": "digits", "rollout": n} for n in rollouts]
    cfgs += [{**base, "model": "digits", "rollout": 16, "train": "lora"}]
    if not args.quick:
        cfgs += [{**base, "model": "wide", "rollout": n} for n in (8, 32)]
    cfgs += [{**base, "model": "digits", "rollout": n, "grad_rollout": True, "steps": 1} for n in (8, 32)]
    return cfgs


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(child(json.loads(args.child))))
        return
    setup(args, "each configuration in a fresh subprocess")
    table = Table(
        "model",
        "student",
        "rollout",
        "params held MB",
        "step peak MB",
        "peak / params",
        "AdamW MB",
        "step transient MB",
        "saved activations MB",
        "grads MB",
    )
    results = []
    for cfg in configurations(args):
        cmd = [sys.executable, __file__, "--child", json.dumps(cfg)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        # glibc's allocator raises its mmap threshold as large blocks are freed and then keeps freed heap
        # memory: fixed thresholds make the RSS follow the live tensors, so its peak is the step's peak.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if done.returncode:
            raise SystemExit(f"{cfg} failed:\n{done.stderr[-3000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(r)
        peak = r["held"] + r["growth"]
        transient = r["growth"] - r["opt_state"]
        student = "control: rollout with grad" if r["grad_rollout"] else r["train"]
        table.add_row(
            f"{r['model']} ({r['params'] / 1e6:.2f} M)",
            student,
            str(r["rollout"]),
            f"{r['held'] / MB:.1f}",
            f"{peak / MB:.1f}",
            f"{peak / r['held']:.2f}",
            f"{r['opt_state'] / MB:.1f}",
            f"{transient / MB:.1f}",
            f"{r['saved'] / MB:.1f}" if not r["grad_rollout"] else "-",
            f"{r['grads'] / MB:.1f}",
        )
    console = Console(width=170)
    console.print(
        f"batch 32, {results[0]['steps']} steps; peak by {results[0]['how']}; params held: the student and "
        "the frozen teacher it was copied from; step peak = params + AdamW moments + step transient (the "
        "high-water mark over the baseline); saved activations: what autograd keeps for the backward "
        "(saved-tensor hooks); the gradients are made while those are freed"
    )
    console.print(table)


if __name__ == "__main__":
    main()
