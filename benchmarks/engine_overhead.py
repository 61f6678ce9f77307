"""Engine overhead: a DanceOPD optimizer step against the bare model passes it performs.

One process, one model the size of the digits student (fieldkit's MMDiT, 1 x 8 x 16 canvases, 16 text
tokens of 384 dims, batch 16): the engine runs ``--steps`` updates. Forward hooks record every pass each
step makes (the rollout's no-grad student forwards with their batch sizes, one teacher forward — two
stacked for guidance — and one student forward + backward); the same passes are then replayed bare,
interleaved with the engine steps so machine noise hits both alike. Prints ``engine / bare`` (1.00 = no
overhead; the target is <= 1.10) from the medians and from the totals::

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


class PassLog:
    """Records every forward of the student and the teacher (batch size, with or without grad) via hooks."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module) -> None:
        self.calls: list[tuple[str, int, bool]] = []
        self.recording = True
        for name, module in (("student", student), ("teacher", teacher)):
            module.register_forward_pre_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module, args):
            if self.recording:
                self.calls.append((name, int(args[0].shape[0]), torch.is_grad_enabled()))

        return hook

    def take(self) -> list[tuple[str, int, bool]]:
        """The passes recorded since the last take; recording pauses until :meth:`resume`."""
        calls, self.calls, self.recording = self.calls, [], False
        return calls

    def resume(self) -> None:
        self.recording = True


def bare_step(engine: Engine, teacher: torch.nn.Module, calls: list[tuple[str, int, bool]]) -> float:
    """Replay the recorded passes bare: the same models, batch sizes and grad modes, nothing else."""
    cond = TextBucket().sample(max(n for _, n, _ in calls), torch.Generator().manual_seed(0)).cond
    models = {"student": engine.student, "teacher": teacher}
    inputs = {
        n: (torch.randn((n, *SHAPE)), torch.full((n,), 0.5), cond.index(slice(0, n))) for _, n, _ in calls
    }
    start = time.perf_counter()
    for name, n, grad in calls:
        if grad:
            models[name](*inputs[n]).square().mean().backward()
        else:
            with torch.inference_mode():
                models[name](*inputs[n])
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
        teacher = engine.ctx.field("teacher")
        passes = PassLog(engine.student, teacher)
        for _ in range(args.warmup):
            engine.update()
            bare_step(engine, teacher, passes.take())
            passes.resume()
        engine_times, bare_times, nfes, samples = [], [], [], []
        for _ in range(args.steps):
            start = time.perf_counter()
            record = engine.update()
            engine_times.append(time.perf_counter() - start)
            nfes.append(record["rollout_nfe"])
            samples.append(record["rollout_samples"] / args.batch)
            bare_times.append(bare_step(engine, teacher, passes.take()))
            passes.resume()
    finally:
        host.unregister("bench")

    total_engine, total_bare = sum(engine_times), sum(bare_times)
    mean_nfe = statistics.mean(nfes)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, ", end="")
    print(f"guidance w={args.guidance}, {args.steps} steps, mean rollout NFE {mean_nfe:.2f} of 16")
    print(f"rollout forwards per sample {statistics.mean(samples):.2f} (a sample leaves at its last query)")
    for name, times in (("engine step", engine_times), ("bare passes", bare_times)):
        mean, median = 1e3 * sum(times) / len(times), 1e3 * statistics.median(times)
        print(f"{name}  {mean:8.2f} ms (median {median:.2f})")
    median_ratio = statistics.median(engine_times) / statistics.median(bare_times)
    totals_ratio = total_engine / total_bare
    print(f"engine / bare = {median_ratio:.3f} (medians), {totals_ratio:.3f} (totals)   (target <= 1.10)")


if __name__ == "__main__":
    main()
