"""Engine overhead: a DanceOPD optimizer step against the bare model passes it performs.

One process, one model the size of the digits student (fieldkit's MMDiT, 1 x 8 x 16 canvases, 16 text
tokens of 384 dims, batch 16): the engine runs ``--steps`` updates and records the rollout NFEs of each.
The same passes are then timed bare — ``nfe`` no-grad student forwards, one teacher forward (two stacked
for guidance), one student forward + backward — with the same inputs, interleaved with the engine steps
so machine noise hits both alike. Prints ``engine / bare`` (1.00 = no overhead; the target is <= 1.10)::

    python benchmarks/engine_overhead.py [--steps 60] [--batch 16] [--guidance 3.0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fieldkit import Cond, loads_graph
from fieldkit.data import Batch
from fieldkit.distill.engine import Engine
from fieldkit.plugins import Params, get_host, hookimpl

SHAPE = (1, 8, 16)
TOKENS, WIDTH = 16, 384
MODEL = "{in_channels: 1, sample_size: [8, 16], patch_size: 2, hidden: 96, depth: 4, heads: 4}"


class TextBucket:
    """Random text-like conditions of the digits world's shapes (token states, mask, pooled)."""

    shape = SHAPE

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        text = torch.randn((batch_size, TOKENS, WIDTH), generator=generator)
        mask = torch.ones((batch_size, TOKENS), dtype=torch.bool)
        pooled = torch.randn((batch_size, WIDTH), generator=generator)
        nulls = {"text": torch.zeros(1, TOKENS, WIDTH), "pooled": torch.zeros(1, WIDTH)}
        return Batch(Cond(text=text, text_mask=mask, pooled=pooled, nulls=nulls))


class BenchPlugin:
    @hookimpl
    def fieldkit_register_datasets(self, register):
        register("bench.text", lambda p, ctx: TextBucket(), Params)


def graph_text(steps: int, batch: int, guidance: float) -> str:
    return f"""
fields:
  teacher: {{type: fieldkit.mmdit, seed: 1, config: {MODEL}}}
  guided: {{type: guidance, field: teacher, w: {guidance}}}
  init: {{type: fieldkit.mmdit, seed: 2, config: {MODEL}}}
routes:
  t2i: {{field: guided, data: {{type: bench.text}}}}
student: {{init: init}}
flow: {{steps: 16, shift: 3.0}}
run: {{steps: {steps}, batch_size: {batch}, lr: 1.0e-4, device: cpu}}
"""


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Give the zero-initialised output layers weights, so every pass does real work."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)


def bare_step(engine: Engine, batch: Batch, nfe: int) -> float:
    """The model passes of one DanceOPD step, bare: nfe rollout forwards, the teacher, student fwd+bwd."""
    student, teacher = engine.student, engine.router.routes[0].field
    x = torch.randn((batch.cond.batch_size, *SHAPE))
    sigma = torch.full((x.shape[0],), 0.5)
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(nfe):
            student(x, sigma, batch.cond)
        teacher(x, sigma, batch.cond)
    student(x, sigma, batch.cond).square().mean().backward()
    seconds = time.perf_counter() - start
    engine.optimizer.zero_grad(set_to_none=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    host = get_host()
    host.register(BenchPlugin(), "bench")
    try:
        graph = loads_graph(graph_text(args.steps + args.warmup, args.batch, args.guidance))
        engine = Engine(graph, write=False, show_progress=False)
        perturb(engine.student, 0)
        perturb(engine.router.routes[0].field, 1)
        batch = TextBucket().sample(args.batch, torch.Generator().manual_seed(0))
        for _ in range(args.warmup):
            engine.update()
            bare_step(engine, batch, 8)
        engine_times, bare_times, nfes = [], [], []
        for _ in range(args.steps):
            start = time.perf_counter()
            record = engine.update()
            engine_times.append(time.perf_counter() - start)
            nfes.append(record["rollout_nfe"])
            bare_times.append(bare_step(engine, batch, record["rollout_nfe"]))
    finally:
        host.unregister("bench")

    total_engine, total_bare = sum(engine_times), sum(bare_times)
    mean_nfe = statistics.mean(nfes)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, ", end="")
    print(f"guidance w={args.guidance}, {args.steps} steps, mean rollout NFE {mean_nfe:.2f} of 16")
    for name, times in (("engine step", engine_times), ("bare passes", bare_times)):
        mean, median = 1e3 * sum(times) / len(times), 1e3 * statistics.median(times)
        print(f"{name}  {mean:8.2f} ms (median {median:.2f})")
    print(f"engine / bare = {total_engine / total_bare:.3f}   (target <= 1.10)")


if __name__ == "__main__":
    main()
