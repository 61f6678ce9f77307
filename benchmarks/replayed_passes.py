"""What ``run.trace`` (fieldkit.backbones.traced) buys and costs on the tiny SD3 student: per forward, per
DanceOPD step, per recording, and in memory.

- **Forward**: no-grad forwards of the tiny SD3 transformer (``sd3.py``: batch 1, 77 + 256 text tokens), the
  base and a LoRA r = 4 student with its adapters merged as the rollout runs it, eager against replayed
  (``traced.call`` inside ``traced.replayed_passes``), in CPU ms of this process, interleaved rounds; the
  replayed output is checked equal to the eager one bit for bit. Beside them the same recording run with
  TorchScript's optimising passes (PyTorch's default, which fieldkit's replays leave out).
- **Step**: engines over ``sd3.py``'s graph in this process, ``run.trace: false`` and ``true`` (and ``true``
  with the optimising passes), stepping in interleaved rounds (CPU ms per step, the per-round ratio and its
  interquartile range), and whether their losses agree bit for bit at every step.
- **Recording**: the CPU seconds of each engine's first step (which records the student's merged rollout
  pass and the teacher's pass and checks them) against a later step.
- **Memory**: how much the resident set of a fresh process grows over ``--memory-steps`` steps after the
  engine is built, per setting (median of ``--memory-runs`` processes): what recording and replaying add,
  with and without the optimising passes; and, for scale, what recording and replaying a two-layer MLP adds
  to a process (TorchScript's own cost).

    python benchmarks/replayed_passes.py [--threads 1] [--rounds 15] [--steps 5]
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

import torch
from common import bench_plugin, interleaved, make_engine, parser, perturb, setup
from sd3 import SHAPE, TINY_SD3, graph_text, make_pipeline, sd3_plugin

TOKENS = 333  # 77 CLIP + 256 T5 tokens, as the side-by-side benchmark's graph


@contextlib.contextmanager
def optimising_passes() -> Iterator[None]:
    """Within the block, replays run with TorchScript's optimising passes (its profiling executor: the first
    replay profiles, the next builds an optimised plan), PyTorch's default that ``traced._replay`` turns off;
    for comparison only."""
    from fieldkit.backbones import traced

    plain = traced._replay
    traced._replay = lambda recording, weights, tensors: recording(*weights, *tensors)
    try:
        yield
    finally:
        traced._replay = plain


def iqr(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4)
    return f"{q[0]:.3f}-{q[2]:.3f}"


def forward_table(rounds: int, calls: int) -> None:
    from fieldkit_sd3.field import LORA_TARGETS, SD3Field
    from peft import LoraConfig, inject_adapter_in_model

    from fieldkit.backbones import traced
    from fieldkit.models.lora import merged_lora

    base = SD3Field.build_transformer(TINY_SD3, seed=0).eval()
    student = SD3Field.build_transformer(TINY_SD3, seed=0).eval()
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=list(LORA_TARGETS)), student)
    perturb(student, 1)
    gen = torch.Generator().manual_seed(0)
    kwargs = {
        "hidden_states": torch.randn(1, *SHAPE, generator=gen),
        "encoder_hidden_states": torch.randn(1, TOKENS, TINY_SD3["joint_attention_dim"], generator=gen),
        "pooled_projections": torch.randn(1, TINY_SD3["pooled_projection_dim"], generator=gen),
        "timestep": torch.full((1,), 500.0),
        "return_dict": False,
    }

    def passes(model: torch.nn.Module, how: str) -> Callable[[], None]:
        scope = optimising_passes if how == "optimised" else contextlib.nullcontext

        def run() -> None:
            with torch.inference_mode(), traced.replayed_passes(how != "eager"), merged_lora(model), scope():
                for _ in range(calls):
                    traced.call(model, **kwargs)

        return run

    models = {"base": base, "LoRA student, merged": student}
    equal = {}
    for name, model in models.items():
        with torch.inference_mode(), merged_lora(model):
            eager = model(**kwargs)[0]
            with traced.replayed_passes():
                outs = [traced.call(model, **kwargs)[0] for _ in range(3)]
            with traced.replayed_passes(), optimising_passes():
                outs += [traced.call(model, **kwargs)[0] for _ in range(3)]
        equal[name] = all(torch.equal(o, eager) for o in outs)
    hows = ("eager", "replayed", "optimised")
    runs = {f"{name}, {how}": passes(model, how) for name, model in models.items() for how in hows}
    times = interleaved(runs, rounds, warmup=1, timer=time.process_time)
    ms = {name: [1e3 * t / calls for t in ts] for name, ts in times.items()}
    print(
        "\n| no-grad forward, batch 1 | eager CPU ms | replayed CPU ms | eager / replayed (IQR) | "
        "with optimising passes CPU ms | their / plain (IQR) | equal |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in models:
        e, r, o = (ms[f"{name}, {how}"] for how in hows)
        ratios = [a / b for a, b in zip(e, r, strict=True)]
        plans = [a / b for a, b in zip(o, r, strict=True)]
        print(
            f"| {name} | {statistics.median(e):.3f} | {statistics.median(r):.3f} | "
            f"{statistics.median(ratios):.3f} ({iqr(ratios)}) | {statistics.median(o):.3f} | "
            f"{statistics.median(plans):.3f} ({iqr(plans)}) | {'bit for bit' if equal[name] else 'NO'} |"
        )


#: The step table's variants: (the run.trace value, whether replays run the optimising passes, label).
VARIANTS = {
    "false": ("false", False, "run.trace: false (eager)"),
    "true": ("true", False, "run.trace: true (replayed)"),
    "optimised": ("true", True, "run.trace: true, with optimising passes"),
}


def step_table(root: Path, rounds: int, steps: int) -> None:
    text = graph_text(root, TOKENS - 77)
    total = 3 + (rounds + 1) * steps
    engines = {
        name: make_engine(text, [f"run.steps={total}", f"run.trace={trace}"])
        for name, (trace, _, _) in VARIANTS.items()
    }
    iters = {name: engine.steps() for name, engine in engines.items()}
    losses: dict[str, list[float]] = {name: [] for name in engines}

    def scope(name: str) -> contextlib.AbstractContextManager[None]:
        return optimising_passes() if VARIANTS[name][1] else contextlib.nullcontext()

    first: dict[str, float] = {}
    for name, it in iters.items():
        with scope(name):
            start = time.process_time()
            losses[name].append(next(it).update.loss)
            first[name] = time.process_time() - start

    def stepping(name: str) -> Callable[[], None]:
        def run() -> None:
            with scope(name):
                for _ in range(steps):
                    losses[name].append(next(iters[name]).update.loss)

        return run

    times = interleaved({name: stepping(name) for name in engines}, rounds, warmup=1, timer=time.process_time)
    ms = {name: [1e3 * s / steps for s in ts] for name, ts in times.items()}
    ratios = [a / b for a, b in zip(ms["false"], ms["true"], strict=True)]
    plans = [a / b for a, b in zip(ms["optimised"], ms["true"], strict=True)]
    same = losses["false"] == losses["true"] == losses["optimised"]
    print("\n| DanceOPD step, tiny SD3, LoRA r = 4, batch 1 | CPU ms / step | first step, CPU s |")
    print("|---|---|---|")
    for name, (_, _, label) in VARIANTS.items():
        median = statistics.median(ms[name])
        print(f"| {label} | {median:.1f} | {first[name]:.2f} ({first[name] - median / 1e3:+.2f}) |")
    print(
        f"\neager / replayed, per round: **{statistics.median(ratios):.3f}** (IQR {iqr(ratios)}); with the "
        f"optimising passes / without: {statistics.median(plans):.3f} (IQR {iqr(plans)}); {len(ratios)} "
        f"rounds of {steps} steps; losses equal bit for bit at all {len(losses['true'])} steps: "
        f"{'yes' if same else 'NO'}"
    )
    print("(first step: its CPU seconds, and beside them how much more than a later step's median)")


CHILD = """
import contextlib, json, sys
from pathlib import Path
sys.path.insert(0, {bench!r})
import torch
torch.set_num_threads(1)
from common import bench_plugin, make_engine
from replayed_passes import optimising_passes
from sd3 import graph_text, sd3_plugin
from fieldkit.testing import quiet_diffusers
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
with bench_plugin():
    quiet_diffusers()
    sd3_plugin()
    engine = make_engine(graph_text(Path({root!r}), {t5}), ["run.steps={steps}", "run.trace={trace}"])
    built = rss()
    with optimising_passes() if {optimised} else contextlib.nullcontext():
        for _ in engine.steps():
            pass
print(json.dumps(rss() - built))
"""


FIXED = """
import json
import diffusers, peft, torch  # what a run imports anyway
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
torch.set_num_threads(1)
m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 8))
x = torch.randn(2, 8)
before = rss()
with torch.no_grad():
    recording = torch.jit.trace(m, x, check_trace=False)
with torch.inference_mode():
    for _ in range(3):
        recording(x)
print(json.dumps(rss() - before))
"""


def memory_table(root: Path, runs: int, steps: int) -> None:
    bench = str(Path(__file__).resolve().parent)
    growth: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(runs):
        for name, (trace, optimised, _) in VARIANTS.items():
            code = CHILD.format(
                bench=bench, root=str(root), t5=TOKENS - 77, steps=steps, trace=trace, optimised=optimised
            )
            env = dict(os.environ, OMP_NUM_THREADS="1")
            out = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            )
            growth[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\n| RSS growth over {steps} steps, fresh process | MiB, median (min-max) |\n|---|---|")
    for name, (_, _, label) in VARIANTS.items():
        g = growth[name]
        print(f"| {label} | {statistics.median(g):.1f} ({min(g):.1f}-{max(g):.1f}) |")
    fixed = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", FIXED], capture_output=True, text=True, check=True)
        fixed.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"| recording and replaying a two-layer MLP (8 x 8) instead | {statistics.median(fixed):.1f} "
        f"({min(fixed):.1f}-{max(fixed):.1f}) |"
    )
    diff = statistics.median(growth["true"]) - statistics.median(growth["false"])
    plans = statistics.median(growth["optimised"]) - statistics.median(growth["true"])
    print(
        f"\nreplayed - eager: {diff:+.1f} MiB; the optimising passes add {plans:+.1f} MiB ({runs} processes "
        "each; the resident set after the steps less the one after building the engine)"
    )


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    p.add_argument("--calls", type=int, default=20, help="forwards per variant in a round")
    p.add_argument("--steps", type=int, default=5, help="engine steps per variant in a round")
    p.add_argument(
        "--memory-runs", type=int, default=3, help="fresh processes per setting for the RSS growth"
    )
    p.add_argument("--memory-steps", type=int, default=10, help="steps each of those processes runs")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.calls, args.steps, args.memory_runs, args.memory_steps = 3, 3, 2, 1, 3
    setup(args, "tiny SD3, run.trace: eager against replayed no-grad passes, CPU time of this process")
    with tempfile.TemporaryDirectory() as tmp, bench_plugin():
        from fieldkit.testing import quiet_diffusers

        quiet_diffusers()
        sd3_plugin()
        root = Path(tmp)
        make_pipeline(root)
        forward_table(args.rounds, args.calls)
        step_table(root, args.rounds, args.steps)
        memory_table(root, args.memory_runs, args.memory_steps)


if __name__ == "__main__":
    main()
